package agentproxy_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/capsulehq/capsule/internal/agentproxy"
)

// The error body is E2B's: the SDKs read sandboxId, message, port and code.
func TestWriteError(t *testing.T) {
	for _, tc := range []struct {
		name, id, msg, want string
		port                int
	}{
		{name: "not found", id: "abc", msg: agentproxy.MsgSandboxNotFound, want: `{"sandboxId":"abc","message":"The sandbox was not found","code":502}` + "\n"},
		{name: "port closed", id: "abc", port: 3000, msg: agentproxy.MsgPortClosed, want: `{"sandboxId":"abc","message":"The sandbox is running but port is not open","port":3000,"code":502}` + "\n"},
		{name: "no sandbox", msg: agentproxy.MsgSandboxNotFound, want: `{"message":"The sandbox was not found","code":502}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			agentproxy.WriteError(rec, http.StatusBadGateway, tc.id, tc.port, tc.msg)
			if rec.Code != http.StatusBadGateway || rec.Header().Get("Content-Type") != "application/json; charset=utf-8" {
				t.Errorf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
			}
			if rec.Body.String() != tc.want {
				t.Errorf("body %q, want %q", rec.Body.String(), tc.want)
			}
		})
	}
}
