package wire_test

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redisbroker/broker/internal/wire"
)

func TestNewIDUnique(t *testing.T) {
	const n = 100_000
	seen := make(map[string]struct{}, n)
	for range n {
		id := wire.NewID()
		if len(id) != wire.IDLen {
			t.Fatalf("ID %q has length %d", id, len(id))
		}
		if strings.Trim(id, "0123456789ABCDEFGHJKMNPQRSTVWXYZ") != "" {
			t.Fatalf("ID %q is not Crockford base32", id)
		}
		if _, dup := seen[id]; dup {
			t.Fatalf("duplicate ID %q", id)
		}
		seen[id] = struct{}{}
	}
}

func TestNewIDConcurrent(t *testing.T) {
	const workers, each = 8, 10_000
	ids := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				ids[w] = append(ids[w], wire.NewID())
			}
		})
	}
	wg.Wait()
	all := slices.Concat(ids...)
	slices.Sort(all)
	if len(slices.Compact(all)) != workers*each {
		t.Fatal("duplicate IDs across goroutines")
	}
}

// TestNewIDSortable checks that IDs from later milliseconds sort later.
func TestNewIDSortable(t *testing.T) {
	var ids []string
	for range 5 {
		start := time.Now().UnixMilli()
		for time.Now().UnixMilli() == start { // spin into the next millisecond
		}
		ids = append(ids, wire.NewID(), wire.NewID())
	}
	for i := 2; i < len(ids); i += 2 {
		prev := max(ids[i-2], ids[i-1])
		if ids[i] <= prev || ids[i+1] <= prev {
			t.Fatalf("IDs from a later millisecond sort earlier: %v", ids)
		}
	}
}

func TestNewIDAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(1000, func() { _ = wire.NewID() }); n != 1 {
		t.Errorf("NewID: %v allocs, want 1", n)
	}
}
