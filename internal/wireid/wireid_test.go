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

func TestTypedIDs(t *testing.T) {
	b := [16]byte{0x0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xff}
	for _, tc := range []struct {
		name string
		id   interface {
			String() string
			IsZero() bool
		}
		parse func(string) error
		want  string
	}{
		{"sandbox", FromUUID[KindSandbox](b, true), func(s string) error { _, err := ParseSandboxID(s); return err }, "0f0102030405060708090a0b0c0d0eff"},
		{"team", FromUUID[KindTeam](b, true), func(s string) error { _, err := ParseTeamID(s); return err }, "team-0f0102030405060708090a0b0c0d0eff"},
		{"user", FromUUID[KindUser](b, true), func(s string) error { _, err := ParseUserID(s); return err }, "usr-0f0102030405060708090a0b0c0d0eff"},
		{"template", FromUUID[KindTemplate](b, true), func(s string) error { _, err := ParseTemplateID(s); return err }, "tpl-0f0102030405060708090a0b0c0d0eff"},
		{"host", FromUUID[KindHost](b, true), func(s string) error { _, err := ParseHostID(s); return err }, "host-0f0102030405060708090a0b0c0d0eff"},
		{"apikey", FromUUID[KindAPIKey](b, true), func(s string) error { _, err := ParseAPIKeyID(s); return err }, "key-0f0102030405060708090a0b0c0d0eff"},
		{"invitation", FromUUID[KindInvitation](b, true), func(s string) error { _, err := ParseInvitationID(s); return err }, "inv-0f0102030405060708090a0b0c0d0eff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.id.String(); got != tc.want {
				t.Fatalf("String() = %q, want %q", got, tc.want)
			}
			if tc.id.IsZero() {
				t.Fatal("a present ID is zero")
			}
			if err := tc.parse(tc.want); err != nil {
				t.Fatalf("parse %q: %v", tc.want, err)
			}
			if err := tc.parse("x" + tc.want); !errors.Is(err, ErrMalformed) {
				t.Fatalf("parse of a malformed ID = %v, want ErrMalformed", err)
			}
		})
	}
	t.Run("platform team is present", func(t *testing.T) {
		id, err := ParseTeamID("team-00000000000000000000000000000000")
		if err != nil || id.IsZero() || id == (TeamID{}) {
			t.Fatalf("the all-zero team ID = %v, %v; want a present ID", id, err)
		}
	})
	t.Run("absent", func(t *testing.T) {
		var id SandboxID
		if !id.IsZero() || id.String() != "" || FromUUID[KindSandbox](b, false) != id {
			t.Fatal("the zero ID is not absent")
		}
		got, ok := FromUUID[KindTeam](b, true).UUID()
		if !ok || got != b {
			t.Fatalf("UUID() = %x, %v", got, ok)
		}
	})
}
