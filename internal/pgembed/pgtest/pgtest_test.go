package pgtest_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopTestServer()
	os.Exit(code)
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func queryString(t *testing.T, c *pgx.Conn, q string, args ...any) string {
	t.Helper()
	var s string
	if err := c.QueryRow(context.Background(), q, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

func TestStartForTest(t *testing.T) {
	a := pgtest.StartForTest(t)
	b := pgtest.StartForTest(t)
	if a == b {
		t.Fatal("two tests share a database")
	}
	ca, cb := connect(t, a), connect(t, b)
	if _, err := ca.Exec(context.Background(), "INSERT INTO users (email) VALUES ('a@example.com')"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pgx.Conn{ca, cb} {
		if got := queryString(t, c, "SELECT name FROM teams WHERE id = '00000000-0000-0000-0000-000000000000'"); got != "Platform" {
			t.Errorf("platform team name = %q", got)
		}
	}
	if got := queryString(t, cb, "SELECT count(*)::text FROM users"); got != "0" {
		t.Errorf("b sees %s users of a", got)
	}
	e := connect(t, pgtest.EmptyDatabaseForTest(t))
	if got := queryString(t, e, "SELECT count(*)::text FROM pg_tables WHERE schemaname = 'public'"); got != "0" {
		t.Errorf("empty database has %s tables", got)
	}
}
