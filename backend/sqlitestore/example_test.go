package sqlitestore_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
)

// Every process that opens the same file shares the bucket of each key:
// here one process, three admissions of a burst of 3, and a fourth
// refused.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	store, err := sqlitestore.Open(filepath.Join(dir, "limits.db"), sqlitestore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	lim, err := bucket.NewLimiter(store, bucket.PerMinute(60).WithBurst(3).WithQuota(1000, 24*time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	for i := range 4 {
		ok, err := lim.Allow(ctx, "tenant-1")
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("call", i+1, ok)
	}
	// Output:
	// call 1 true
	// call 2 true
	// call 3 true
	// call 4 false
}

// Open refuses a file that is not a database, and leaves it alone.
func ExampleOpen_notADatabase() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(path, []byte("not a database, but long enough to look like one's header\n"), 0o644); err != nil {
		log.Fatal(err)
	}

	_, err = sqlitestore.Open(path, sqlitestore.Options{})
	fmt.Println(errors.Is(err, sqlitestore.ErrNotDatabase))
	// Output:
	// true
}
