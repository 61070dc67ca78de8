package sqlite

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// serialOf is the credential serial addDevice gives device id.
func serialOf(id string) string {
	sum := sha256.Sum256([]byte("serial-" + id))
	return hex.EncodeToString(sum[:16])
}

// addDevice stores an active device with one credential, serialOf(id).
func addDevice(t testing.TB, st *Store, id string) {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Microsecond)
	cert := []byte("cert-" + id)
	sum := sha256.Sum256(cert)
	d := store.Device{ID: id, Model: "m1", Tags: map[string]string{}, State: store.StateActive, CreatedAt: now, UpdatedAt: now}
	c := store.Credential{Serial: serialOf(id), SubjectKind: identity.KindDevice, SubjectID: id,
		Fingerprint: hex.EncodeToString(sum[:]), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		CSR: []byte("csr"), Certificate: cert, CreatedAt: now}
	if err := st.CreateDevice(context.Background(), d, c); err != nil {
		t.Fatalf("CreateDevice(%q): %v", id, err)
	}
}

func cached(st *Store) int {
	st.ro.mu.RLock()
	defer st.ro.mu.RUnlock()
	return len(st.ro.stmts)
}

// The cache holds statements, never results: a lookup after a write sees
// the write, and repeating a lookup prepares nothing new.
func TestReadPoolCachesStatementsNotResults(t *testing.T) {
	ctx := context.Background()
	st := openTemp(t)
	addDevice(t, st, "dev-1")
	addDevice(t, st, "dev-2")

	if _, err := st.GetDevice(ctx, "dev-1"); err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	if _, err := st.CredentialBySerial(ctx, serialOf("dev-1")); err != nil {
		t.Fatalf("CredentialBySerial: %v", err)
	}
	n := cached(st)
	if n == 0 {
		t.Fatal("no statement was cached after two lookups")
	}
	for i := 0; i < 20; i++ {
		id := "dev-" + strconv.Itoa(1+i%2)
		d, err := st.GetDevice(ctx, id)
		if err != nil || d.ID != id {
			t.Fatalf("GetDevice(%q) = %+v, %v", id, d, err)
		}
		c, err := st.CredentialBySerial(ctx, serialOf(id))
		if err != nil || c.SubjectID != id {
			t.Fatalf("CredentialBySerial(%q) = %+v, %v", id, c, err)
		}
	}
	if got := cached(st); got != n {
		t.Errorf("repeated lookups grew the cache from %d to %d statements", n, got)
	}

	if _, err := st.SetDeviceState(ctx, "dev-1", store.StateDisabled, "stolen", time.Now()); err != nil {
		t.Fatalf("SetDeviceState: %v", err)
	}
	if d, err := st.GetDevice(ctx, "dev-1"); err != nil || d.State != store.StateDisabled {
		t.Errorf("after disabling GetDevice = %+v, %v; want state disabled", d, err)
	}
	if _, err := st.GetDevice(ctx, "nobody"); err == nil {
		t.Error("GetDevice of an unknown device succeeded through a cached statement")
	}
}

// Distinct texts beyond the bound run uncached and still answer.
func TestReadPoolBound(t *testing.T) {
	ctx := context.Background()
	st := openTemp(t)
	for i := 0; i < maxCachedStatements+20; i++ {
		var got int
		if err := st.ro.QueryRowContext(ctx, fmt.Sprintf("SELECT %d", i)).Scan(&got); err != nil || got != i {
			t.Fatalf("SELECT %d = %d, %v", i, got, err)
		}
	}
	if got := cached(st); got != maxCachedStatements {
		t.Errorf("cache holds %d statements, want the bound %d", got, maxCachedStatements)
	}
	if _, err := st.GetDevice(ctx, "nobody"); err == nil {
		t.Error("GetDevice of an unknown device succeeded")
	}
	// A statement that does not compile reports its error, cached or not.
	if err := st.ro.QueryRowContext(ctx, "SELEKT 1").Scan(new(int)); err == nil {
		t.Error("a malformed statement scanned without error")
	}
	if _, err := st.ro.QueryContext(ctx, "SELEKT 1"); err == nil {
		t.Error("a malformed query ran without error")
	}
}

// Many goroutines share the statements (go test -race checks the map).
func TestReadPoolConcurrent(t *testing.T) {
	ctx := context.Background()
	st := openTemp(t)
	for i := 0; i < 8; i++ {
		addDevice(t, st, "dev-"+strconv.Itoa(i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				id := "dev-" + strconv.Itoa((g+i)%8)
				if c, err := st.CredentialBySerial(ctx, serialOf(id)); err != nil || c.SubjectID != id {
					errs <- fmt.Errorf("CredentialBySerial(%q) = %+v, %v", id, c, err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// BenchmarkAuthLookup is the store's part of authenticating one MQTT
// connection. "admission" is the one joined read the registry makes
// (Store.Admission); "cached" the two it made before (the credential by
// serial, then the device with its tags); "uncached" those two with each
// statement prepared per call, as the store did before the cache.
func BenchmarkAuthLookup(b *testing.B) {
	ctx := context.Background()
	st, err := Open(ctx, b.TempDir()+"/warden.db")
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	const n = 1000
	for i := 0; i < n; i++ {
		addDevice(b, st, "dev-"+strconv.Itoa(i))
	}
	run := func(b *testing.B, q querier) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			id := "dev-" + strconv.Itoa(i%n)
			i++
			cs, err := queryCredentials(ctx, q, `SELECT `+credentialColumns+` FROM credentials WHERE serial = $1`, serialOf(id))
			if err != nil || len(cs) != 1 {
				b.Fatalf("credential %s: %v", id, err)
			}
			if _, err := getDevice(ctx, q, id); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("admission", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			id := "dev-" + strconv.Itoa(i%n)
			i++
			if a, err := st.Admission(ctx, serialOf(id)); err != nil || a.SubjectState != store.StateActive {
				b.Fatalf("admission %s: %+v, %v", id, a, err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) { run(b, st.ro) })
	b.Run("uncached", func(b *testing.B) { run(b, st.ro.db) })
}
