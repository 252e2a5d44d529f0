package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/capsulehq/capsule/internal/pgembed"
	"github.com/capsulehq/capsule/internal/store"
)

// migrateUsage describes runMigrate's arguments.
const migrateUsage = `usage: capsule migrate [up|status] [--database-url URL] [--data-dir DIR] [--pg-bin-dir DIR]

  up       apply pending migrations (default)
  status   print the applied and the newest migration version

Without --database-url (or DATABASE_URL) the embedded PostgreSQL in
DIR/postgres is started for the duration of the command.`

// runMigrate implements `capsule migrate`: args are the arguments after
// "migrate"; progress goes to out.
func runMigrate(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() { fmt.Fprintln(out, migrateUsage) }
	dsn := fs.String("database-url", os.Getenv("DATABASE_URL"), "PostgreSQL URL (default $DATABASE_URL; empty: the embedded server)")
	dataDir := fs.String("data-dir", "/var/lib/capsule", "data directory of the embedded server")
	binDir := fs.String("pg-bin-dir", "", "directory of initdb and postgres (default: the newest in /usr/lib/postgresql)")
	action := "up"
	if len(args) > 0 && (args[0] == "up" || args[0] == "status") {
		action, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("migrate: unexpected argument %q\n%s", fs.Arg(0), migrateUsage)
	}
	if *dsn == "" {
		srv, err := pgembed.Start(ctx, pgembed.Config{DataDir: *dataDir, BinDir: *binDir})
		if err != nil {
			return err
		}
		defer srv.Close()
		*dsn = srv.DSN()
	}
	st, err := store.Open(ctx, *dsn)
	if err != nil {
		return err
	}
	defer st.Close()
	if action == "up" {
		if err := st.Migrate(ctx); err != nil {
			return err
		}
	}
	cur, latest, err := st.MigrationVersion(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "schema version %d (newest %d)\n", cur, latest)
	return nil
}
