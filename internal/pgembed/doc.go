// Package pgembed runs a private PostgreSQL server for `capsule serve` when no
// DATABASE_URL is configured, using the machine's PostgreSQL server binaries
// (Debian: postgresql-15, found in /usr/lib/postgresql/<version>/bin).
//
// # Layout
//
// Everything lives in <data dir>/postgres, owned by the user postgres runs as
// and private to it (0700):
//
//	postgres/data/          the cluster (PGDATA), made once by initdb
//	postgres/run/           the Unix socket (.s.PGSQL.5432); the only listener
//	postgres/postgres.log   the server's log (stderr)
//
// # Security
//
// The server has no TCP listener (listen_addresses is empty). It accepts local
// connections with trust authentication, and the socket is reachable only by
// the OS user that runs postgres (and root): the socket directory and the
// socket are 0700. Anyone who can open the socket could equally read the data
// files, so a password would protect nothing more; none is generated or
// stored. pg_hba.conf rejects every host (TCP) connection should TCP ever be
// enabled by hand.
//
// The application connects as a non-superuser role (default "capsule") that
// owns the application database; the superuser "postgres" is used only to
// create roles and databases.
//
// # Running as root
//
// PostgreSQL refuses to run as root. When Capsule runs as root, postgres (and
// initdb) run as a dedicated system user, "capsule-pg" by default, created
// with useradd when missing; the cluster directory is chowned to it. Every
// directory above the cluster must be searchable by that user (the default
// /var/lib/capsule is); Start says which one is not.
//
// # Lifetime
//
// postgres is a child process in its own process group (a Ctrl-C in the
// terminal reaches Capsule, which then stops postgres in order). Close asks
// for a fast shutdown (SIGINT). If Capsule dies without Close, the kernel
// sends postgres SIGINT (Pdeathsig). A postmaster.pid left by a crash is
// recognized on the next Start: a postmaster still running in the data
// directory is shut down, stray backends are stopped, and stale lock files are
// removed.
//
// # Tests
//
// The test helpers are in package pgembed/pgtest (pgtest.StartForTest gives
// each test a fresh, migrated database cloned from a template database on
// one server per test process), so that this package, which capsule serve
// links, does not link the testing package.
package pgembed
