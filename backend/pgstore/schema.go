package pgstore

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// decideSQL creates the functions of schema version 1, leasesSQL those
// of version 2, learnSQL those of version 3; see the comments at their
// tops.
var (
	//go:embed decide.sql
	decideSQL string
	//go:embed leases.sql
	leasesSQL string
	//go:embed learn.sql
	learnSQL string
)

// migrations[v] takes the schema from version v-1 to version v; the
// version table holds the last one applied. Entries are only ever
// appended, and a version never drops what an earlier one created: a
// change of the function is a new function (decide_v2) beside the old,
// so that processes running an earlier version go on working while a
// rolling upgrade runs, and a Store that finds a later version than its
// own uses the schema as it is.
//
// buckets holds one row per key whose bucket is not fresh (what it
// learned included) or that holds leases (see decide.sql, leases.sql and
// learn.sql for its columns). It is not indexed but by its key: an index
// on fresh_at would make every admission update it, where now an update
// touches no indexed column and stays on its page (a HOT update, helped by
// the fillfactor); the sweep reads the table instead, once a minute.
var migrations = [][]string{
	1: {
		`CREATE TABLE @schema.buckets (
			key      bytea  NOT NULL PRIMARY KEY,
			tat      bigint NOT NULL,
			paused   bigint NOT NULL,
			gen      bigint NOT NULL,
			seen     bigint NOT NULL,
			fresh_at bigint NOT NULL,
			quotas   bigint[]
		) WITH (fillfactor = 80)`,
		// swept is the latest time the sweep deleted rows at: no key is
		// decided before it (see decide.sql).
		`CREATE TABLE @schema.swept (
			id int    NOT NULL PRIMARY KEY CHECK (id = 0),
			t  bigint NOT NULL
		)`,
		`INSERT INTO @schema.swept (id, t) VALUES (0, 0)`,
		decideSQL,
	},
	// Leases (issue 17). decide_v2 keeps a row's fresh_at at least its
	// held_until, so that sweeps keep a key's row while its leases are
	// held. A version-1 process admitting the key without a cap rewrites
	// fresh_at without it, and sweep_v1 may then delete the row: only the
	// key's clock (seen) is lost, since the cap counts the leases table.
	2: {
		`ALTER TABLE @schema.buckets ADD COLUMN held_until bigint NOT NULL DEFAULT 0`,
		`CREATE TABLE @schema.leases (
			key     bytea  NOT NULL,
			id      bytea  NOT NULL,
			expires bigint NOT NULL,
			PRIMARY KEY (key, id)
		)`,
		leasesSQL,
	},
	// Learned limits (issue 16). decide_v3 keeps a row's fresh_at at
	// least the times what the key learned holds until, so that every
	// version's sweep keeps the row while it holds. Processes of earlier
	// versions decide a learned limit at its ceiling, never reading
	// learned; a row they write keeps it, but with a fresh_at of their
	// own, and their batches and sweeps may then delete the row before
	// the record expires: the key goes back to its own limit early.
	3: {
		`ALTER TABLE @schema.buckets ADD COLUMN learned bigint[]`,
		learnSQL,
	},
}

// SchemaVersion is the version of the schema this package writes, kept in
// the schema's table version.
const SchemaVersion = 3

// latestVersion is the version the migrations lead to: SchemaVersion (a
// test checks), or more in a test that adds a migration.
func latestVersion() int { return len(migrations) - 1 }

// smallBatch is the most distinct keys of a batch that is decided beside
// others, under locks of its keys, rather than alone (see decide.sql).
const smallBatch = 8

// lockKey returns the advisory lock under which the functions of schema
// (quoted) decide and sweep: a hash of its name.
func lockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("leakybucket/pgstore " + schema))
	return int64(h.Sum64())
}

// statements are the Store's SQL, with its schema in place. decide
// leaves out decide_v3's intervals, which a batch without learned limits
// gets as NULL: scanning them cost its round trip 5 allocations;
// decideLearned has them.
type statements struct {
	decide, decideLearned, sweep string
}

func newStatements(schema string) statements {
	call := ` FROM ` + schema + `.decide_v3($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)`
	return statements{
		decide:        `SELECT allowed, waits, nows, tats, prevs, gens, freshs` + call,
		decideLearned: `SELECT allowed, waits, nows, tats, prevs, gens, freshs, ivs` + call,
		sweep:         `SELECT ` + schema + `.sweep_v2($1)`,
	}
}

// ensureSchema creates or upgrades the Store's schema once: the first
// call that finds it at this package's version, or installs it, marks the
// Store ready.
func (s *Store) ensureSchema(ctx context.Context) error {
	if s.ready.Load() {
		return nil
	}
	s.install.Lock()
	defer s.install.Unlock()
	if s.ready.Load() {
		return nil
	}
	var version int
	err := s.pool.QueryRow(ctx, `SELECT version FROM `+s.schema+`.version`, pgx.QueryExecModeExec).Scan(&version)
	var pgErr *pgconn.PgError
	switch {
	case err == nil && version >= latestVersion():
		s.ready.Store(true)
		return nil
	case err == nil, errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000"):
		// Older, or absent (undefined table or schema): install.
	default:
		return fmt.Errorf("pgstore: schema %s: reading its version: %w", s.schema, err)
	}
	if err := s.migrate(ctx, latestVersion()); err != nil {
		return fmt.Errorf("pgstore: schema %s: installing: %w", s.schema, err)
	}
	s.ready.Store(true)
	return nil
}

// schemaGone reports whether err says that the Store's schema, or an
// object of it, does not exist: dropped while the Store ran (an operator
// starting every bucket afresh). If so the next call installs it again;
// the statement that failed decided nothing.
func (s *Store) schemaGone(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "3F000", "42P01", "42883": // undefined schema, table, function
		s.ready.Store(false)
		return true
	}
	return false
}

// migrate brings the schema to version latest in one transaction, under
// an advisory lock on the schema's name, so that Stores starting at once
// install it once: the later ones find the work done.
func (s *Store) migrate(ctx context.Context, latest int) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		exec := func(sql string, args ...any) error {
			_, err := tx.Exec(ctx, sql, append([]any{pgx.QueryExecModeExec}, args...)...)
			return err
		}
		if err := exec(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "leakybucket schema "+s.schema); err != nil {
			return err
		}
		if err := exec(`CREATE SCHEMA IF NOT EXISTS ` + s.schema); err != nil {
			return err
		}
		if err := exec(`CREATE TABLE IF NOT EXISTS ` + s.schema + `.version (
			id      int PRIMARY KEY CHECK (id = 0),
			version int NOT NULL)`); err != nil {
			return err
		}
		var version int
		err := tx.QueryRow(ctx, `SELECT version FROM `+s.schema+`.version`, pgx.QueryExecModeExec).Scan(&version)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		for v := version + 1; v <= latest; v++ {
			for _, stmt := range migrations[v] {
				// The simple protocol runs a script of many statements.
				stmt = strings.NewReplacer("@schema", s.schema, "@lock", strconv.FormatInt(lockKey(s.schema), 10),
					"@small", strconv.Itoa(smallBatch), "@keyns", strconv.Itoa(int(int32(lockKey(s.schema)))),
					"@span", strconv.FormatInt(spanTicks, 10)).Replace(stmt)
				if _, err := tx.Exec(ctx, stmt, pgx.QueryExecModeSimpleProtocol); err != nil {
					return fmt.Errorf("version %d: %w", v, err)
				}
			}
		}
		if version >= latest {
			return nil
		}
		return exec(`INSERT INTO `+s.schema+`.version (id, version) VALUES (0, $1)
			ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version`, latest)
	})
}
