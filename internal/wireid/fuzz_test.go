package wireid

import (
	"testing"
)

// FuzzParse: whatever parses as a wire ID of a kind formats back to the
// same string (one spelling per ID), and an ID of one kind never parses as
// another kind's.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"usr-0f0102030405060708090a0b0c0d0eff",
		"team-00000000000000000000000000000000",
		"key-ffffffffffffffffffffffffffffffff",
		"tpl-0123456789abcdef0123456789abcdef",
		"0123456789abcdef0123456789abcdef",
		"0123456789ABCDEF0123456789abcdef",
		"usr-0f0102030405060708090a0b0c0d0ef",
		"usr-0f0102030405060708090a0b0c0d0eff0",
		"usr-0f0102030405060708090a0b0c0d0eg0",
		"team-0123456789abcdef0123456789abcde\u00e9",
		"",
	} {
		f.Add(s)
	}
	prefixes := []string{User, Team, APIKey, Template, Sandbox}
	f.Fuzz(func(t *testing.T, s string) {
		parsed := 0
		for _, prefix := range prefixes {
			id, err := Parse(prefix, s)
			if err != nil {
				if id.Valid {
					t.Fatalf("Parse(%q, %q) failed but returned a valid UUID", prefix, s)
				}
				continue
			}
			parsed++
			if !id.Valid {
				t.Fatalf("Parse(%q, %q) returned an invalid UUID without an error", prefix, s)
			}
			if again := Format(prefix, id); again != s {
				t.Fatalf("Parse(%q, %q) formats back as %q", prefix, s, again)
			}
		}
		if parsed > 1 {
			t.Fatalf("%q parses as %d kinds of ID", s, parsed)
		}
	})
}
