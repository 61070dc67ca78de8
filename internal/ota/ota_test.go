package ota

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
	"github.com/warden-iot/warden/otaproto"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type alerts struct {
	mu   sync.Mutex
	list []Alert
}

func (a *alerts) Alert(_ context.Context, al Alert) {
	a.mu.Lock()
	a.list = append(a.list, al)
	a.mu.Unlock()
}
func (a *alerts) kinds() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var k []string
	for _, al := range a.list {
		k = append(k, al.Kind)
	}
	return k
}

type fixture struct {
	t     *testing.T
	st    *sqlite.Store
	svc   *Service
	dir   string
	clk   *clock
	al    *alerts
	key   crypto.Signer
	pub   []byte // PEM
	model string
	seq   uint64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
	al := &alerts{}
	svc, err := New(Options{Store: st, Blobs: FileBlobs{Dir: filepath.Join(dir, "firmware")}, Alerter: al, Now: clk.now,
		ImageURL: func(d, sha string) string { return "https://warden.test/ota/v1/images/" + sha }})
	if err != nil {
		t.Fatal(err)
	}
	key, err := firmware.GenerateKey(firmware.KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := firmware.EncodePublicKeyPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, st: st, svc: svc, dir: dir, clk: clk, al: al, key: key, pub: pub, model: "sensor", seq: 100}
}

// release signs a payload as version v with counter n.
func (f *fixture) release(v string, n uint32, payloadSize int, key crypto.Signer) (img, statement []byte) {
	f.t.Helper()
	ver, err := firmware.ParseVersion(v)
	if err != nil {
		f.t.Fatal(err)
	}
	payload := make([]byte, payloadSize)
	_, _ = rand.Read(payload)
	img, err = firmware.Sign(payload, key, firmware.SignOptions{Version: ver, SecurityCounter: n})
	if err != nil {
		f.t.Fatal(err)
	}
	f.seq++
	now := f.clk.now()
	st, err := firmware.SignStatement(firmware.Statement{Model: f.model, Version: ver, SecurityCounter: n,
		ImageSHA256: sha256.Sum256(img), ImageSize: int64(len(img)), Sequence: f.seq, IssuedAt: now, ExpiresAt: now.Add(24 * time.Hour)}, key)
	if err != nil {
		f.t.Fatal(err)
	}
	return img, st
}

func (f *fixture) trust() {
	f.t.Helper()
	if _, err := f.svc.Trust(context.Background(), f.pub, "test", "operator"); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) upload(v string, n uint32) store.FirmwareImage {
	f.t.Helper()
	img, st := f.release(v, n, 3000, f.key)
	row, err := f.svc.Upload(context.Background(), st, bytes.NewReader(img), "operator")
	if err != nil {
		f.t.Fatalf("upload %s: %v", v, err)
	}
	return row
}

func (f *fixture) devices(n int, tags map[string]string) []string {
	f.t.Helper()
	var ids []string
	for i := range n {
		id := fmt.Sprintf("dev-%04d", i)
		cert := []byte("cert-" + id)
		sum := sha256.Sum256(cert)
		serial := make([]byte, 16)
		_, _ = rand.Read(serial)
		now := f.clk.now()
		if tags == nil {
			tags = map[string]string{}
		}
		err := f.st.CreateDevice(context.Background(), store.Device{ID: id, Model: f.model, Tags: tags, State: store.StateActive, CreatedAt: now, UpdatedAt: now},
			store.Credential{Serial: hex.EncodeToString(serial), SubjectKind: identity.KindDevice, SubjectID: id, Fingerprint: hex.EncodeToString(sum[:]),
				NotBefore: now, NotAfter: now.Add(time.Hour), CSR: []byte("csr"), Certificate: cert, CreatedAt: now})
		if err != nil {
			f.t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func TestUploadVerifiesEverything(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	img, st := f.release("1.0.0", 1, 2000, f.key)

	// Nothing is trusted yet.
	if _, err := f.svc.Upload(ctx, st, bytes.NewReader(img), "op"); !errors.Is(err, ErrRefused) {
		t.Fatalf("upload before trust: %v, want ErrRefused", err)
	}
	f.trust()

	other, _ := firmware.GenerateKey(firmware.KeyECDSAP256)
	otherImg, otherSt := f.release("1.0.1", 1, 2000, other)
	tampered := bytes.Clone(img)
	tampered[len(tampered)/2] ^= 1
	expiredImg, _ := f.release("1.0.2", 1, 2000, f.key)
	ver, _ := firmware.ParseVersion("1.0.2")
	now := f.clk.now()
	expiredSt, err := firmware.SignStatement(firmware.Statement{Model: f.model, Version: ver, SecurityCounter: 1, ImageSHA256: sha256.Sum256(expiredImg),
		ImageSize: int64(len(expiredImg)), Sequence: 5, IssuedAt: now.Add(-48 * time.Hour), ExpiresAt: now.Add(-time.Hour)}, f.key)
	if err != nil {
		t.Fatal(err)
	}
	_, st2 := f.release("1.0.3", 1, 2000, f.key) // a statement for another image

	for _, tc := range []struct {
		name string
		st   []byte
		img  io.Reader
	}{
		{"untrusted key", otherSt, bytes.NewReader(otherImg)},
		{"tampered image", st, bytes.NewReader(tampered)},
		{"truncated upload", st, bytes.NewReader(img[:len(img)-10])},
		{"reader fails mid-way", st, iotest.TimeoutReader(iotest.HalfReader(bytes.NewReader(img)))},
		{"expired statement", expiredSt, bytes.NewReader(expiredImg)},
		{"statement of another image", st2, bytes.NewReader(img)},
		{"garbage statement", []byte("not cose"), bytes.NewReader(img)},
		{"oversized image", st, io.MultiReader(bytes.NewReader(img), bytes.NewReader([]byte("extra")))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.svc.Upload(ctx, tc.st, tc.img, "op")
			if err == nil {
				t.Fatal("upload accepted")
			}
			imgs, _ := f.st.ListFirmwareImages(ctx, "")
			if len(imgs) != 0 {
				t.Fatalf("a refused upload left a row: %+v", imgs)
			}
			entries, _ := os.ReadDir(filepath.Join(f.dir, "firmware"))
			if len(entries) != 0 {
				t.Fatalf("a refused upload left files: %v", entries)
			}
		})
	}

	row, err := f.svc.Upload(ctx, st, bytes.NewReader(img), "op")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(img)
	if row.SHA256 != hex.EncodeToString(sum[:]) || row.Version != "1.0.0+0" || row.Size != int64(len(img)) {
		t.Fatalf("stored row %+v", row)
	}
	got, err := os.ReadFile(filepath.Join(f.dir, "firmware", row.SHA256+".img"))
	if err != nil || !bytes.Equal(got, img) {
		t.Fatalf("stored blob differs: %v", err)
	}
	// Uploading the same release again changes nothing.
	if _, err := f.svc.Upload(ctx, st, bytes.NewReader(img), "op"); err != nil {
		t.Fatalf("repeat upload: %v", err)
	}
	// A revoked key's releases are refused.
	id, _ := firmware.KeyID(f.key.Public())
	if _, err := f.svc.Untrust(ctx, id, "op"); err != nil {
		t.Fatal(err)
	}
	img3, st3 := f.release("1.1.0", 1, 100, f.key)
	if _, err := f.svc.Upload(ctx, st3, bytes.NewReader(img3), "op"); !errors.Is(err, ErrRefused) {
		t.Fatalf("upload signed by a revoked key: %v", err)
	}
	if _, err := f.svc.Trust(ctx, f.pub, "again", "op"); !errors.Is(err, ErrRefused) {
		t.Fatalf("re-trusting a revoked key: %v", err)
	}
}

func TestTrustRefusesPrivateKeysAndJunk(t *testing.T) {
	f := newFixture(t)
	der, _ := firmware.MarshalPrivateKey(f.key)
	for _, in := range [][]byte{nil, []byte("junk"), der} {
		if _, err := f.svc.Trust(context.Background(), in, "x", "op"); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("Trust(%q...) = %v, want ErrInvalid", in[:min(len(in), 8)], err)
		}
	}
}

func TestSweepRemovesOrphansOnly(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.trust()
	kept := f.upload("1.0.0", 1)
	blobs := FileBlobs{Dir: filepath.Join(f.dir, "firmware")}
	orphan := []byte("a crash between blob and row")
	sum := sha256.Sum256(orphan)
	if _, err := blobs.Put(ctx, hex.EncodeToString(sum[:]), orphan); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(blobs.Dir, ".x.img.tmp-123"), []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	removed, err := blobs.Sweep(ctx, func(sha string) (bool, error) { return sha == kept.SHA256, nil }, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 {
		t.Fatalf("removed %v, want the orphan and the temporary file", removed)
	}
	if _, err := os.Stat(filepath.Join(blobs.Dir, kept.SHA256+".img")); err != nil {
		t.Fatalf("kept image gone: %v", err)
	}
}

func TestParseStages(t *testing.T) {
	for in, ok := range map[string]bool{"1%,10%,50%,100%": true, "100": true, "50,100": true, "10,5,100": false, "0,100": false, "50": false, "": false, "a,100": false, "100,100": false} {
		_, err := ParseStages(in)
		if (err == nil) != ok {
			t.Errorf("ParseStages(%q) = %v, want ok=%v", in, err, ok)
		}
	}
	if got := stageCuts(100, []int{1, 10, 50, 100}); fmt.Sprint(got) != "[1 10 50 100]" {
		t.Errorf("stageCuts(100) = %v", got)
	}
	if got := stageCuts(7, []int{1, 10, 50, 100}); fmt.Sprint(got) != "[1 1 4 7]" {
		t.Errorf("stageCuts(7) = %v", got)
	}
}

// run takes one device through an offered update to end.
func (f *fixture) run(id string, end string) {
	f.t.Helper()
	ctx := context.Background()
	o, err := f.svc.Current(ctx, id, "1.0.0", 1, 0)
	if err != nil || o == nil {
		f.t.Fatalf("device %s: offer = %v, %v", id, o, err)
	}
	rep := otaproto.Report{Rollout: o.Rollout, SHA256: o.SHA256}
	for _, s := range []string{otaproto.StateDownloading, otaproto.StateVerified, otaproto.StateInstalling} {
		rep.State = s
		if _, err := f.svc.Report(ctx, id, rep); err != nil {
			f.t.Fatalf("device %s report %s: %v", id, s, err)
		}
	}
	switch end {
	case store.DeviceBooted:
		rep.State, rep.Version, rep.SecurityCounter = otaproto.StateBooted, o.Version, 2
	case store.DeviceFailed:
		rep.State, rep.Reason = otaproto.StateFailed, "flash write error"
	}
	if _, err := f.svc.Report(ctx, id, rep); err != nil {
		f.t.Fatalf("device %s report %s: %v", id, end, err)
	}
}

func TestRolloutStagesAndThreshold(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.trust()
	img := f.upload("2.0.0", 2)
	f.devices(100, map[string]string{"site": "a"})

	r, sum, err := f.svc.CreateRollout(ctx, RolloutSpec{Image: img.SHA256[:10], Tags: map[string]string{"site": "a"},
		Stages: []int{1, 10, 50, 100}, FailureThreshold: 0.1, MinFinished: 5, Timeout: time.Hour}, "op")
	if err != nil {
		t.Fatal(err)
	}
	if sum.Members != 100 || r.Model != f.model {
		t.Fatalf("summary %+v rollout %+v", sum, r)
	}
	// A second rollout cannot take the same devices.
	if _, _, err := f.svc.CreateRollout(ctx, RolloutSpec{Image: img.SHA256}, "op"); err == nil {
		t.Fatal("a second rollout over busy devices was created")
	}
	members := func(stage int) []string {
		ds, err := f.st.ListRolloutDevices(ctx, r.ID, store.RolloutDeviceFilter{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range ds {
			if d.Stage == stage {
				out = append(out, d.DeviceID)
			}
		}
		return out
	}
	s0, s1 := members(0), members(1)
	if len(s0) != 1 || len(s1) != 9 {
		t.Fatalf("stage sizes %d, %d; want 1, 9", len(s0), len(s1))
	}
	// Stage 2 devices are not offered anything yet.
	if o, err := f.svc.Current(ctx, s1[0], "1.0.0", 1, 0); err != nil || o != nil {
		t.Fatalf("stage-2 device offered before its stage: %v %v", o, err)
	}
	if _, err := f.svc.CanFetch(ctx, s1[0], img.SHA256); !errors.Is(err, ErrNotOffered) {
		t.Fatalf("stage-2 device may fetch: %v", err)
	}
	f.run(s0[0], store.DeviceBooted)
	if err := f.svc.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if r, _ = f.st.GetRollout(ctx, r.ID); r.Stage != 1 || r.State != store.RolloutRunning {
		t.Fatalf("after stage 1: %+v", r)
	}
	// Stage 2: 9 devices, 2 fail: 2/10 finished = 20% > 10%, once 5 are judged.
	f.run(s1[0], store.DeviceFailed)
	f.run(s1[1], store.DeviceFailed)
	if r, _ = f.st.GetRollout(ctx, r.ID); r.State != store.RolloutRunning {
		t.Fatalf("paused before min-finished: %+v", r)
	}
	f.run(s1[2], store.DeviceBooted)
	f.run(s1[3], store.DeviceBooted)
	if r, _ = f.st.GetRollout(ctx, r.ID); r.State != store.RolloutPaused {
		t.Fatalf("not paused at 2 of 5 failed: %+v", r)
	}
	if k := f.al.kinds(); len(k) != 1 || k[0] != "rollout.paused" {
		t.Fatalf("alerts %v", k)
	}
	// Paused: nobody new is offered anything.
	if o, _ := f.svc.Current(ctx, s1[4], "1.0.0", 1, 0); o != nil {
		t.Fatal("offer while paused")
	}
	if _, err := f.svc.Resume(ctx, r.ID, "op"); err != nil {
		t.Fatal(err)
	}
	// The threshold holds: the next judgement pauses again.
	f.run(s1[4], store.DeviceBooted)
	if r, _ = f.st.GetRollout(ctx, r.ID); r.State != store.RolloutPaused {
		t.Fatalf("not paused again: %+v", r)
	}
	if _, err := f.svc.Abort(ctx, r.ID, "bad build", "op"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Resume(ctx, r.ID, "op"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("resume after abort: %v", err)
	}
	st, err := f.svc.RolloutStatus(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Members != 100 || st.Totals[store.DeviceBooted] != 4 || st.Totals[store.DeviceFailed] != 2 {
		t.Fatalf("status totals %+v", st.Totals)
	}
}

func TestRolloutCompletesWithTimeoutsAndSkips(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.trust()
	img := f.upload("2.0.0", 5)
	ids := f.devices(4, nil)
	// dev 0 already runs a higher security counter: never offered.
	if _, err := f.svc.Current(ctx, ids[0], "3.0.0", 9, 0); err != nil {
		t.Fatal(err)
	}
	r, sum, err := f.svc.CreateRollout(ctx, RolloutSpec{Image: img.SHA256, Stages: []int{100}, FailureThreshold: 0, MinFinished: 2, Timeout: time.Minute}, "op")
	if err != nil {
		t.Fatal(err)
	}
	if sum.Skipped != 1 {
		t.Fatalf("skipped %d, want 1", sum.Skipped)
	}
	if o, _ := f.svc.Current(ctx, ids[0], "3.0.0", 9, 0); o != nil {
		t.Fatal("offered an image below the device's security counter")
	}
	// dev 1 reports a counter that would make the image a rollback after
	// the rollout began: skipped then, too.
	if o, _ := f.svc.Current(ctx, ids[1], "1.0.0", 6, 0); o != nil {
		t.Fatal("offered an image below the device's security counter")
	}
	f.run(ids[2], store.DeviceBooted)
	// ids[3] never shows up: after the timeout the stage closes (2 judged
	// would be needed but only 1 device could be: min(2, 4-2 skipped) = 2).
	f.clk.add(2 * time.Minute)
	if err := f.svc.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	r, _ = f.st.GetRollout(ctx, r.ID)
	if r.State != store.RolloutPaused {
		t.Fatalf("want paused (too few finished), got %+v", r)
	}
	// The late device comes back, finishes, and a resume completes it.
	if _, err := f.svc.Resume(ctx, r.ID, "op"); err != nil {
		t.Fatal(err)
	}
	f.run(ids[3], store.DeviceBooted)
	if err := f.svc.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if r, _ = f.st.GetRollout(ctx, r.ID); r.State != store.RolloutCompleted {
		t.Fatalf("want completed, got %+v", r)
	}
	fw, err := f.st.GetDeviceFirmware(ctx, ids[3])
	if err != nil || fw.Version != "2.0.0+0" || fw.SecurityCounter != 5 {
		t.Fatalf("device firmware after boot: %+v %v", fw, err)
	}
	// A device cannot lower its recorded floor by reporting less.
	if _, err := f.svc.Current(ctx, ids[3], "1.0.0", 1, 0); err != nil {
		t.Fatal(err)
	}
	if fw, _ = f.st.GetDeviceFirmware(ctx, ids[3]); fw.SecurityCounter != 5 {
		t.Fatalf("floor lowered to %d", fw.SecurityCounter)
	}
}

func TestReportsOutOfOrderAndForeign(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.trust()
	img := f.upload("2.0.0", 2)
	ids := f.devices(2, nil)
	r, _, err := f.svc.CreateRollout(ctx, RolloutSpec{Image: img.SHA256}, "op")
	if err != nil {
		t.Fatal(err)
	}
	// Booted before being offered anything: refused.
	if _, err := f.svc.Report(ctx, ids[0], otaproto.Report{State: otaproto.StateBooted, Rollout: r.ID, SHA256: img.SHA256, Version: "2.0.0"}); err == nil {
		t.Fatal("booted accepted from pending")
	}
	// A report about another rollout or image.
	if _, err := f.svc.Report(ctx, ids[0], otaproto.Report{State: otaproto.StateDownloading, Rollout: "ro-other", SHA256: img.SHA256}); !errors.Is(err, ErrNotOffered) {
		t.Fatalf("foreign rollout report: %v", err)
	}
	// Booted with the wrong version counts as rolled back.
	o, _ := f.svc.Current(ctx, ids[1], "1.0.0", 1, 0)
	if o == nil {
		t.Fatal("no offer")
	}
	if _, err := f.svc.Report(ctx, ids[1], otaproto.Report{State: otaproto.StateInstalling, Rollout: r.ID, SHA256: img.SHA256}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Report(ctx, ids[1], otaproto.Report{State: otaproto.StateBooted, Rollout: r.ID, SHA256: img.SHA256, Version: "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	ds, _ := f.st.ListRolloutDevices(ctx, r.ID, store.RolloutDeviceFilter{State: store.DeviceRolledBack})
	if len(ds) != 1 || ds[0].DeviceID != ids[1] {
		t.Fatalf("rolled-back devices %+v", ds)
	}
}

// A write that fails part-way (the disk fills up: here the file-size
// limit stands in for it, a real write(2) failure) stores nothing, and the
// same upload works once there is room.
func TestUploadOnFullDiskStoresNothing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.trust()
	img, st := f.release("4.0.0", 1, 300<<10, f.key)

	signal.Ignore(syscall.SIGXFSZ)
	defer signal.Reset(syscall.SIGXFSZ)
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	lim := old
	lim.Cur = 100 << 10
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	_, err := f.svc.Upload(ctx, st, bytes.NewReader(img), "op")
	if rerr := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); rerr != nil {
		t.Fatal(rerr)
	}
	if err == nil {
		t.Fatal("upload succeeded past the file-size limit")
	}
	t.Logf("upload on a full disk: %v", err)
	if imgs, _ := f.st.ListFirmwareImages(ctx, ""); len(imgs) != 0 {
		t.Fatalf("a failed write left a row: %+v", imgs)
	}
	entries, _ := os.ReadDir(filepath.Join(f.dir, "firmware"))
	if len(entries) != 0 {
		t.Fatalf("a failed write left files: %v", entries)
	}
	if _, err := f.svc.Upload(ctx, st, bytes.NewReader(img), "op"); err != nil {
		t.Fatalf("upload after the disk has room again: %v", err)
	}
}
