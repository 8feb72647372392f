package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
)

// applicationID marks a database file as this package's ("LkBt"), so that
// a Store never adopts, or migrates, another program's database.
const applicationID = 0x4c6b4274

// migrations[v] takes the schema from version v-1 to version v; the file's
// PRAGMA user_version is the last one applied. Entries are only ever
// appended: a change of schema is a new version with the statements that
// convert the previous one, so that a file written by any earlier version
// opens.
//
// buckets holds one row per key whose state is not that of a fresh bucket,
// in clock ticks (Unix microseconds): tat, paused and gen as in
// driver.State;
// seen, the latest time the row was decided at; fresh_at, driver.FreshAt
// of the state, so that a sweep judges a row without decoding it (not
// indexed: an index would cost every admission a second page written,
// about a fifth of its time, to spare sweeps a scan); and quotas, the quota state in the form of appendQuotas, NULL when empty.
// clock holds swept, the latest time at which rows were deleted as fresh.
// Together seen and swept keep the store's clock from running backwards
// (see Store).
//
// Version 2 adds leases: one row per lease of a capped limit
// (driver.Limit.Inflight), by key and lease ID, with the tick at which it
// expires. A key's bucket row is kept while a lease of it is held (see
// sweepStep); a lease row goes when it is released, or once expired
// (pruned by the next capped admission of its key, and by sweeps).
//
// Version 3 keeps in buckets.quotas, ahead of the quota state, what a key
// of a learned limit learned (driver.State.Learned): a blob that starts
// with learnedFormat, where version 2 wrote quotasFormat only. No table
// changes, so a version 2 file is a version 3 file as it is; the version
// tells a program of version 2 not to open the file, and one that has it
// open finds such a row corrupt, never misreads it. fresh_at counts the
// record (driver.FreshAt), so a row stays while its record holds.
var migrations = [][]string{
	1: {
		`CREATE TABLE buckets (
			key      BLOB    NOT NULL PRIMARY KEY,
			tat      INTEGER NOT NULL,
			paused   INTEGER NOT NULL,
			gen      INTEGER NOT NULL,
			seen     INTEGER NOT NULL,
			fresh_at INTEGER NOT NULL,
			quotas   BLOB
		) WITHOUT ROWID`,
		`CREATE TABLE clock (
			id    INTEGER PRIMARY KEY CHECK (id = 0),
			swept INTEGER NOT NULL
		)`,
		`INSERT INTO clock (id, swept) VALUES (0, 0)`,
	},
	2: {
		`CREATE TABLE leases (
			key     BLOB    NOT NULL,
			id      BLOB    NOT NULL,
			expires INTEGER NOT NULL,
			PRIMARY KEY (key, id)
		) WITHOUT ROWID`,
	},
	3: {}, // a format of the quotas column (learnedFormat), no table change
}

// SchemaVersion is the version of the schema this package writes, kept in
// the file's PRAGMA user_version.
const SchemaVersion = 3

// latestVersion is the version the migrations lead to: SchemaVersion (a
// test checks), or more in a test that adds a migration.
func latestVersion() int { return len(migrations) - 1 }

// migrate brings the schema of the database on c to SchemaVersion, creating
// it in an empty file. It always writes, so that a database this process
// cannot write fails here rather than at the first admission: SQLite opens
// a file it may only read without complaint, and even grants it BEGIN
// IMMEDIATE. Processes opening one file at once serialize on BEGIN
// IMMEDIATE; the later ones find the work done.
func migrate(ctx context.Context, c *sql.Conn) error {
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return err
	}
	if err := migrateLocked(ctx, c); err != nil {
		c.ExecContext(context.Background(), "ROLLBACK")
		return err
	}
	_, err := c.ExecContext(ctx, "COMMIT")
	return err
}

func migrateLocked(ctx context.Context, c *sql.Conn) error {
	version, app, err := checkOurs(ctx, c)
	if err != nil {
		return err
	}
	latest := latestVersion()
	if app == applicationID && version == latest {
		_, err := c.ExecContext(ctx, "UPDATE clock SET swept = swept WHERE id = 0")
		return err
	}
	for v := version + 1; v <= latest; v++ {
		for _, stmt := range migrations[v] {
			if _, err := c.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migrating to schema version %d: %w", v, err)
			}
		}
	}
	// PRAGMA takes no parameters; both values are integers of ours.
	if _, err := c.ExecContext(ctx, "PRAGMA application_id = "+strconv.Itoa(applicationID)); err != nil {
		return err
	}
	_, err = c.ExecContext(ctx, "PRAGMA user_version = "+strconv.Itoa(latest))
	return err
}

// checkOurs returns the schema version and application id of the
// database on c, or ErrNotDatabase if it holds another program's schema, or
// ErrNewerSchema if a later version of ours. It only reads, so a file that
// is not ours is left as it was.
func checkOurs(ctx context.Context, c *sql.Conn) (version, app int, err error) {
	version, app, err = schemaVersion(ctx, c)
	if err != nil {
		return 0, 0, err
	}
	if app != applicationID {
		if app != 0 {
			return 0, 0, &Error{Op: "open", kind: ErrNotDatabase, Err: fmt.Errorf("application_id is %#x, not %#x", app, applicationID)}
		}
		var tables int
		if err := c.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema").Scan(&tables); err != nil {
			return 0, 0, err
		}
		if tables > 0 || version != 0 {
			return 0, 0, &Error{Op: "open", kind: ErrNotDatabase, Err: fmt.Errorf("it holds another program's schema (%d objects, user_version %d)", tables, version)}
		}
	}
	if latest := latestVersion(); version > latest {
		return 0, 0, &Error{Op: "open", kind: ErrNewerSchema, Err: fmt.Errorf("the file has schema version %d, this program knows up to %d", version, latest)}
	}
	return version, app, nil
}

func schemaVersion(ctx context.Context, c *sql.Conn) (version, app int, err error) {
	if err := c.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return 0, 0, err
	}
	if err := c.QueryRowContext(ctx, "PRAGMA application_id").Scan(&app); err != nil {
		return 0, 0, err
	}
	return version, app, nil
}
