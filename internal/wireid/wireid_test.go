package wireid

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

func TestRoundTrip(t *testing.T) {
	id := pgtype.UUID{Bytes: [16]byte{0x0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xff}, Valid: true}
	for _, prefix := range []string{User, Team, APIKey, Sandbox} {
		s := Format(prefix, id)
		if len(s) != len(prefix)+32 {
			t.Fatalf("Format(%q) = %q", prefix, s)
		}
		got, err := Parse(prefix, s)
		if err != nil || got != id {
			t.Fatalf("Parse(%q, %q) = %v, %v", prefix, s, got, err)
		}
	}
	if Format(User, pgtype.UUID{}) != "" {
		t.Fatal("invalid UUID formatted")
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ prefix, s string }{
		{User, ""},
		{User, "usr-"},
		{User, "team-0f0102030405060708090a0b0c0d0eff"},
		{User, "usr-0F0102030405060708090a0b0c0d0eff"},
		{User, "usr-0f0102030405060708090a0b0c0d0ef"},
		{User, "usr-0f0102030405060708090a0b0c0d0effaa"},
		{User, "usr-zz0102030405060708090a0b0c0d0eff"},
		{Sandbox, "sb-0f0102030405060708090a0b0c0d0eff"},
		{Sandbox, "../../etc/passwd"},
	} {
		if _, err := Parse(tc.prefix, tc.s); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q, %q) = %v, want ErrMalformed", tc.prefix, tc.s, err)
		}
	}
}
