package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/otaproto"
)

// The OTA tests play Warden's side of the protocol minimally: an inline
// subscriber on the test broker answers status reports and block requests
// as internal/ota does, and an httptest TLS server, with a certificate
// from the test root, stands in for the HTTPS endpoints. Releases are real:
// MCUboot images and statements signed with freshly generated keys.

const testModel = "sensor-v2"

func mustVersion(t testing.TB, s string) firmware.Version {
	t.Helper()
	v, err := firmware.ParseVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func releaseKey(t testing.TB, kt firmware.KeyType) crypto.Signer {
	t.Helper()
	k, err := firmware.GenerateKey(kt)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testRelease is a signed image and the signed statement about it.
type testRelease struct {
	file []byte
	stmt []byte
	st   firmware.Statement
	sha  string
}

// newRelease signs an image of payloadSize bytes (its content depends on
// the version, so two versions differ) and a statement for it; mod may
// change the statement before it is signed.
func newRelease(t testing.TB, key crypto.Signer, model, version string, counter uint32, seq uint64, payloadSize int, mod func(*firmware.Statement)) testRelease {
	t.Helper()
	v := mustVersion(t, version)
	payload := make([]byte, payloadSize)
	for i := range payload {
		payload[i] = byte(i*7) ^ v.Minor ^ byte(v.Revision)
	}
	file, err := firmware.Sign(payload, key, firmware.SignOptions{Version: v, SecurityCounter: counter})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	st := firmware.Statement{
		Model: model, Version: v, SecurityCounter: counter,
		ImageSHA256: sha256.Sum256(file), ImageSize: int64(len(file)), Sequence: seq,
		IssuedAt: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour),
	}
	if mod != nil {
		mod(&st)
	}
	stmt, err := firmware.SignStatement(st, key)
	if err != nil {
		t.Fatal(err)
	}
	return testRelease{file: file, stmt: stmt, st: st, sha: hex.EncodeToString(st.ImageSHA256[:])}
}

func (r testRelease) offer(rollout string) otaproto.Offer {
	return otaproto.Offer{Rollout: rollout, Statement: r.stmt, SHA256: r.sha, Size: r.st.ImageSize,
		Version: r.st.Version.String(), BlockSize: otaproto.DefaultBlockSize}
}

// fakeOTA answers a device's OTA messages over MQTT as internal/ota does:
// a "current" report gets the waiting offer on notify, a block request
// gets its block.
type fakeOTA struct {
	t  testing.TB
	b  *testBroker
	id string
	// open, if set, opens sealed payloads (an envelope device's).
	open func(topic string, msg []byte) ([]byte, error)

	mu      sync.Mutex
	offer   *otaproto.Offer
	image   []byte                    // what blocks are cut from
	corrupt func(off int64, b []byte) // changes a block before it is sent
	drop    map[int64]int             // requests at these offsets to leave unanswered

	reports  chan otaproto.Report
	requests chan otaproto.BlockRequest
}

func newFakeOTA(t testing.TB, b *testBroker, id string, open func(string, []byte) ([]byte, error)) *fakeOTA {
	t.Helper()
	f := &fakeOTA{t: t, b: b, id: id, open: open, drop: map[int64]int{},
		reports: make(chan otaproto.Report, 256), requests: make(chan otaproto.BlockRequest, 4096)}
	if err := b.srv.Subscribe("private/"+id+"/ota/+", 11, f.onMessage); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeOTA) setOffer(o *otaproto.Offer, image []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.offer, f.image = o, image
}

func (f *fakeOTA) onMessage(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	channel := pk.TopicName[strings.LastIndexByte(pk.TopicName, '/')+1:]
	if channel != otaproto.TopicStatus && channel != otaproto.TopicGet {
		return // Warden's own notify and block messages
	}
	payload := bytes.Clone(pk.Payload)
	if f.open != nil {
		pt, err := f.open(pk.TopicName, payload)
		if err != nil {
			f.t.Errorf("%s: not a sealed message for its topic: %v", pk.TopicName, err)
			return
		}
		payload = pt
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	switch channel {
	case otaproto.TopicStatus:
		var rep otaproto.Report
		if err := dec.Decode(&rep); err != nil {
			f.t.Errorf("status report %q: %v", payload, err)
			return
		}
		if err := rep.Validate(); err != nil {
			f.t.Errorf("status report %+v: %v", rep, err)
		}
		f.reports <- rep
		f.mu.Lock()
		o := f.offer
		f.mu.Unlock()
		if rep.State == otaproto.StateCurrent && o != nil {
			b, _ := json.Marshal(o)
			go func() { _ = f.b.srv.Publish(otaproto.Topic(f.id, otaproto.TopicNotify), b, false, 1) }()
		}
	case otaproto.TopicGet:
		var req otaproto.BlockRequest
		if err := dec.Decode(&req); err != nil {
			f.t.Errorf("block request %q: %v", payload, err)
			return
		}
		if err := req.Validate(); err != nil {
			f.t.Errorf("block request %+v: %v", req, err)
			return
		}
		f.requests <- req
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.drop[req.Offset] > 0 {
			f.drop[req.Offset]--
			return
		}
		size := int64(len(f.image))
		if req.Offset >= size {
			f.t.Errorf("block request past the image: %+v", req)
			return
		}
		data := bytes.Clone(f.image[req.Offset:min(size, req.Offset+int64(req.Length))])
		if f.corrupt != nil {
			f.corrupt(req.Offset, data)
		}
		frame := otaproto.EncodeBlock(req.Offset, size, data)
		go func() { _ = f.b.srv.Publish(otaproto.Topic(f.id, otaproto.TopicBlock), frame, false, 0) }()
	}
}

func nextReport(t testing.TB, ch <-chan otaproto.Report) otaproto.Report {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no OTA status report within 10s")
		return otaproto.Report{}
	}
}

// expectReport takes the next report and checks its state.
func expectReport(t testing.TB, ch <-chan otaproto.Report, state string) otaproto.Report {
	t.Helper()
	r := nextReport(t, ch)
	if r.State != state {
		t.Fatalf("report %+v, want state %q", r, state)
	}
	return r
}

// expectDownload takes the "downloading" reports up to the "verified" one,
// and checks that there is one at the start and then at most one per
// quarter, with offsets rising.
func expectDownload(t testing.TB, ch <-chan otaproto.Report, size int64) []otaproto.Report {
	t.Helper()
	var got []otaproto.Report
	for {
		r := nextReport(t, ch)
		if r.State == otaproto.StateVerified {
			break
		}
		if r.State != otaproto.StateDownloading {
			t.Fatalf("report %+v while downloading, want downloading or verified", r)
		}
		if len(got) > 0 && r.Offset <= got[len(got)-1].Offset || r.Offset >= size {
			t.Errorf("downloading offset %d after %v (image of %d bytes)", r.Offset, got, size)
		}
		got = append(got, r)
	}
	if len(got) == 0 || len(got) > 4+1 {
		t.Errorf("%d downloading reports, want the start and at most one per quarter: %+v", len(got), got)
	}
	return got
}

// installs records the Installer's calls.
type installs struct {
	mu    sync.Mutex
	files [][]byte
	sts   []firmware.Statement
}

func (in *installs) record(file []byte, st firmware.Statement) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.files = append(in.files, bytes.Clone(file))
	in.sts = append(in.sts, st)
}

func (in *installs) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.files)
}

// events collects OnEvent calls.
type events chan OTAEvent

func (e events) on(ev OTAEvent) { e <- ev }

// await returns the first event in state, failing after 10s.
func (e events) await(t testing.TB, state string) OTAEvent {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-e:
			if ev.State == state {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %q event within 10s", state)
			return OTAEvent{}
		}
	}
}

func startAgent(t testing.TB, c *Client, cfg OTAConfig) *Agent {
	t.Helper()
	a, err := c.OTA(cfg)
	if err != nil {
		t.Fatalf("OTA: %v", err)
	}
	t.Cleanup(func() { _ = a.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return a
}

// awaitIdle waits until the agent has no update under way.
func awaitIdle(t testing.TB, a *Agent) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.mu.Lock()
		j := a.job
		a.mu.Unlock()
		if j == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent's update did not end within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func saveState(t testing.TB, s OTAStore, st OTAState) {
	t.Helper()
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
}

func TestOTAOverMQTT(t *testing.T) {
	e := newEnv(t)
	key := releaseKey(t, firmware.KeyECDSAP256)
	rel := newRelease(t, key, testModel, "1.1.0", 2, 7, 10000, nil)
	srv := newFakeOTA(t, e.broker, e.id, nil)
	o := rel.offer("r1")
	srv.setOffer(&o, rel.file)
	srv.drop[2048] = 1 // the first request for the third block goes unanswered

	c := connect(t, e.config(t))
	store := FileOTAStore{Dir: t.TempDir()}
	saveState(t, store, OTAState{Version: mustVersion(t, "1.0.0"), SecurityCounter: 1, Sequence: 3})
	in := &installs{}
	evs := make(events, 256)
	var agent *Agent
	agent = startAgent(t, c, OTAConfig{
		ReleaseKey: key.Public(), Model: testModel, Store: store,
		Installer: func(ctx context.Context, img *firmware.Image, file []byte, st firmware.Statement) error {
			in.record(file, st)
			if img.Header.Version != st.Version {
				t.Errorf("installer got image %s for statement %s", img.Header.Version, st.Version)
			}
			return agent.Booted(ctx, st.Version, st.SecurityCounter, st.Sequence)
		},
		BlockSize: 1024, BlockTimeout: 300 * time.Millisecond,
		Logger: testLogger(t), OnEvent: evs.on,
	})

	cur := expectReport(t, srv.reports, otaproto.StateCurrent)
	if cur.Version != "1.0.0+0" || cur.SecurityCounter != 1 || cur.Sequence != 3 {
		t.Errorf("current report %+v, want version 1.0.0+0, counter 1, sequence 3", cur)
	}
	dl := expectDownload(t, srv.reports, rel.st.ImageSize)
	if dl[0].Offset != 0 || dl[0].Rollout != "r1" || dl[0].SHA256 != rel.sha {
		t.Errorf("first downloading report %+v", dl[0])
	}
	if len(dl) != 4 {
		t.Errorf("%d downloading reports, want the start and one per quarter", len(dl))
	}
	expectReport(t, srv.reports, otaproto.StateInstalling)
	booted := expectReport(t, srv.reports, otaproto.StateBooted)
	if booted.Version != "1.1.0+0" || booted.SecurityCounter != 2 || booted.Sequence != 7 || booted.Rollout != "r1" || booted.SHA256 != rel.sha {
		t.Errorf("booted report %+v", booted)
	}

	if in.count() != 1 || !bytes.Equal(in.files[0], rel.file) {
		t.Fatalf("installer got %d images; want exactly the signed image", in.count())
	}
	var reqs []int64
	for len(srv.requests) > 0 {
		reqs = append(reqs, (<-srv.requests).Offset)
	}
	want := []int64{0, 1024, 2048, 2048}
	for off := int64(3072); off < rel.st.ImageSize; off += 1024 {
		want = append(want, off)
	}
	if !slices.Equal(reqs, want) {
		t.Errorf("block requests at %v, want %v (the unanswered one asked again)", reqs, want)
	}
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	wantSt := OTAState{Version: rel.st.Version, SecurityCounter: 2, Sequence: 7, Accepted: 7}
	if !sameOTAState(st, wantSt) {
		t.Errorf("stored state %+v, want %+v", st, wantSt)
	}
	if _, err := os.Stat(filepath.Join(store.Dir, otaDownloadFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the finished download is still in the store: %v", err)
	}

	// Warden (wrongly) offers the same statement again: it is refused as a
	// replay, and nothing is downloaded or installed twice.
	awaitIdle(t, agent)
	if err := agent.Check(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if r := expectReport(t, srv.reports, otaproto.StateCurrent); r.Version != "1.1.0+0" {
		t.Errorf("current report after the update: %+v", r)
	}
	failed := expectReport(t, srv.reports, otaproto.StateFailed)
	if !strings.HasPrefix(failed.Reason, "statement: ") || failed.Rollout != "r1" || failed.SHA256 != rel.sha {
		t.Errorf("failed report %+v", failed)
	}
	if ev := evs.await(t, OTARefused); !errors.Is(ev.Err, firmware.ErrReplay) {
		t.Errorf("refusal %v, want firmware.ErrReplay", ev.Err)
	}
	if in.count() != 1 || len(srv.requests) != 0 {
		t.Errorf("the replayed offer reached the download (%d requests) or installer (%d calls)", len(srv.requests), in.count())
	}
}

func TestOTARefusals(t *testing.T) {
	key := releaseKey(t, firmware.KeyEd25519) // fixed-size signatures: equal-sized images
	other := releaseKey(t, firmware.KeyEd25519)
	current := newRelease(t, key, testModel, "1.1.0", 2, 7, 6000, nil)
	older := newRelease(t, key, testModel, "1.0.5", 2, 5, 6000, nil)
	if len(older.file) != len(current.file) {
		t.Fatalf("older image is %d bytes, current %d: the swap test needs equal sizes", len(older.file), len(current.file))
	}
	device := OTAState{Version: mustVersion(t, "1.0.0"), SecurityCounter: 1, Sequence: 3}
	otherKey := newRelease(t, other, testModel, "1.1.0", 2, 7, 6000, nil)
	expired := newRelease(t, key, testModel, "1.1.0", 2, 7, 6000, func(s *firmware.Statement) {
		s.IssuedAt, s.ExpiresAt = time.Now().Add(-3*time.Hour), time.Now().Add(-time.Hour)
	})
	otherModel := newRelease(t, key, "other-model", "1.1.0", 2, 7, 6000, nil)

	cases := []struct {
		name    string
		state   OTAState
		offer   func() otaproto.Offer
		serve   []byte
		corrupt func(off int64, b []byte)
		reason  string // the failed report's reason starts with it
		err     error  // the event's error wraps it
		kind    string
		blocks  bool // the download started
	}{
		{name: "wrong release key", state: device,
			offer:  func() otaproto.Offer { return otherKey.offer("r") },
			reason: "statement: ", err: firmware.ErrKeyMismatch, kind: OTARefused},
		{name: "expired statement", state: device,
			offer:  func() otaproto.Offer { return expired.offer("r") },
			reason: "statement: ", err: firmware.ErrExpired, kind: OTARefused},
		{name: "replayed older statement", state: OTAState{Version: device.Version, SecurityCounter: 1, Sequence: 9},
			offer:  func() otaproto.Offer { return current.offer("r") },
			reason: "statement: ", err: firmware.ErrReplay, kind: OTARefused},
		{name: "lower security counter", state: OTAState{Version: device.Version, SecurityCounter: 3, Sequence: 3},
			offer:  func() otaproto.Offer { return current.offer("r") },
			reason: "statement: ", err: firmware.ErrRollback, kind: OTARefused},
		{name: "other model", state: device,
			offer:  func() otaproto.Offer { return otherModel.offer("r") },
			reason: "statement: ", err: firmware.ErrModel, kind: OTARefused},
		{name: "offer names another image", state: device,
			offer: func() otaproto.Offer {
				o := current.offer("r")
				o.SHA256 = older.sha
				return o
			},
			reason: "offer does not match its statement", kind: OTARefused},
		{name: "offer names another version", state: device,
			offer: func() otaproto.Offer {
				o := current.offer("r")
				o.Version = "9.9.9+0"
				return o
			},
			reason: "offer does not match its statement", kind: OTARefused},
		{name: "byte flipped in a block", state: device,
			offer: func() otaproto.Offer { return current.offer("r") },
			corrupt: func(off int64, b []byte) {
				if off == 1024 {
					b[100] ^= 0x01
				}
			},
			reason: "image: ", err: firmware.ErrDigest, kind: otaproto.StateFailed, blocks: true},
		{name: "older signed image swapped in", state: device,
			offer: func() otaproto.Offer { return current.offer("r") }, serve: older.file,
			reason: "image: ", err: firmware.ErrDigest, kind: otaproto.StateFailed, blocks: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			srv := newFakeOTA(t, e.broker, e.id, nil)
			o := tc.offer()
			serve := tc.serve
			if serve == nil {
				serve = current.file
			}
			srv.setOffer(&o, serve)
			srv.corrupt = tc.corrupt

			c := connect(t, e.config(t))
			store := FileOTAStore{Dir: t.TempDir()}
			saveState(t, store, tc.state)
			in := &installs{}
			evs := make(events, 256)
			startAgent(t, c, OTAConfig{
				ReleaseKey: key.Public(), Model: testModel, Store: store,
				Installer: func(_ context.Context, _ *firmware.Image, file []byte, st firmware.Statement) error {
					in.record(file, st)
					return nil
				},
				BlockSize: 1024, BlockTimeout: time.Second, Logger: testLogger(t), OnEvent: evs.on,
			})

			expectReport(t, srv.reports, otaproto.StateCurrent)
			var r otaproto.Report
			for r = nextReport(t, srv.reports); r.State == otaproto.StateDownloading; r = nextReport(t, srv.reports) {
			}
			if r.State != otaproto.StateFailed || !strings.HasPrefix(r.Reason, tc.reason) {
				t.Fatalf("report %+v, want failed with a reason starting %q", r, tc.reason)
			}
			if r.Rollout != "r" || r.SHA256 != o.SHA256 && r.SHA256 != current.sha {
				t.Errorf("failed report names rollout %q, image %q", r.Rollout, r.SHA256)
			}
			ev := evs.await(t, tc.kind)
			if tc.err != nil && !errors.Is(ev.Err, tc.err) {
				t.Errorf("event error %v, want %v", ev.Err, tc.err)
			}
			if ev.Err == nil || !strings.HasPrefix(ev.Err.Error(), tc.reason) {
				t.Errorf("event error %v does not match the reported reason %q", ev.Err, r.Reason)
			}
			if in.count() != 0 {
				t.Errorf("the installer was called %d times", in.count())
			}
			if got := len(srv.requests) > 0; got != tc.blocks {
				t.Errorf("block requests sent: %v, want %v", got, tc.blocks)
			}
			st, err := store.Load()
			if err != nil {
				t.Fatal(err)
			}
			if st.Accepted != tc.state.Sequence || st.Pending != nil {
				t.Errorf("state after a refusal: %+v", st)
			}
			for _, name := range []string{otaDownloadFile, otaDownloadSHA} {
				if _, err := os.Stat(filepath.Join(store.Dir, name)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s left in the store after a refusal: %v", name, err)
				}
			}
		})
	}
}

// TestOTAResumesPartialDownload restarts a download from what an earlier
// run left in the store, and starts over when that part turns out to be
// damaged (a power loss can leave garbage at a file's end).
func TestOTAResumesPartialDownload(t *testing.T) {
	key := releaseKey(t, firmware.KeyEd25519)
	rel := newRelease(t, key, testModel, "1.1.0", 2, 7, 5000, nil)
	damaged := bytes.Clone(rel.file[:3000])
	damaged[2999] ^= 0xff
	for _, tc := range []struct {
		name    string
		partial []byte
		want    []int64 // offsets of the first block requests
	}{
		{"intact", rel.file[:3000], []int64{3000, 4024}},
		{"damaged", damaged, []int64{3000, 4024, 5048, 0, 1024}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			srv := newFakeOTA(t, e.broker, e.id, nil)
			o := rel.offer("r")
			srv.setOffer(&o, rel.file)
			store := FileOTAStore{Dir: t.TempDir()}
			saveState(t, store, OTAState{Version: mustVersion(t, "1.0.0"), SecurityCounter: 1, Sequence: 3})
			d, err := store.OpenDownload(rel.sha)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.Write(tc.partial); err != nil {
				t.Fatal(err)
			}
			_ = d.Close()

			c := connect(t, e.config(t))
			in := &installs{}
			a := startAgent(t, c, OTAConfig{
				ReleaseKey: key.Public(), Model: testModel, Store: store,
				Installer: func(_ context.Context, _ *firmware.Image, file []byte, st firmware.Statement) error {
					in.record(file, st)
					return nil
				},
				BlockSize: 1024, Logger: testLogger(t),
			})
			expectReport(t, srv.reports, otaproto.StateCurrent)
			if r := expectReport(t, srv.reports, otaproto.StateDownloading); r.Offset != 3000 {
				t.Errorf("first downloading report at %d, want the resumed 3000", r.Offset)
			}
			for r := nextReport(t, srv.reports); r.State != otaproto.StateInstalling; r = nextReport(t, srv.reports) {
				if r.State != otaproto.StateDownloading && r.State != otaproto.StateVerified {
					t.Fatalf("report %+v", r)
				}
			}
			var reqs []int64
			for len(srv.requests) > 0 && len(reqs) < len(tc.want) {
				reqs = append(reqs, (<-srv.requests).Offset)
			}
			if !slices.Equal(reqs, tc.want) {
				t.Errorf("first block requests at %v, want %v", reqs, tc.want)
			}
			awaitIdle(t, a)
			if in.count() != 1 || !bytes.Equal(in.files[0], rel.file) {
				t.Fatalf("installer got %d images; want exactly the signed image", in.count())
			}
		})
	}
}

// fakeHTTPS stands in for Warden's HTTPS OTA endpoints.
type fakeHTTPS struct {
	t      testing.TB
	id     string
	srv    *httptest.Server
	open   func(topic string, msg []byte) ([]byte, error) // set: requests must be sealed
	image  []byte
	sha    string
	offers func(n int) *otaproto.Offer // the answer to the n-th check (from 1)

	mu      sync.Mutex
	checks  []url.Values
	ranges  []string // Range header of each image GET with a valid token
	dropAt  int64    // the first full GET breaks the connection after this many bytes
	dropped bool
	// quirk, if set, may answer the n-th image GET (from 1) itself,
	// returning true when it did.
	quirk func(n int, w http.ResponseWriter, r *http.Request) bool
	certs []bool // whether each request carried a client certificate

	reports chan otaproto.Report
}

func newFakeHTTPS(t testing.TB, e *env, image []byte) *fakeHTTPS {
	t.Helper()
	sum := sha256.Sum256(image)
	f := &fakeHTTPS{t: t, id: e.id, image: image, sha: hex.EncodeToString(sum[:]), reports: make(chan otaproto.Report, 256)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+otaproto.PathCheck, f.check)
	mux.HandleFunc("GET "+otaproto.PathImages+"{sha}", f.serveImage)
	mux.HandleFunc("POST "+otaproto.PathStatus, f.status)
	cert, err := e.ca.serverCert([]string{"localhost"}, localhost)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: e.ca.pool, ClientAuth: tls.VerifyClientCertIfGiven}
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeHTTPS) imageURL(token string) string {
	return f.srv.URL + otaproto.PathImages + f.sha + "?" + url.Values{"device": {f.id}, "token": {token}}.Encode()
}

func (f *fakeHTTPS) noteCert(r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.certs = append(f.certs, len(r.TLS.PeerCertificates) > 0)
}

func (f *fakeHTTPS) check(w http.ResponseWriter, r *http.Request) {
	f.noteCert(r)
	q := r.URL.Query()
	if f.open != nil {
		msg, err := base64.RawURLEncoding.DecodeString(q.Get("sealed"))
		if err != nil || q.Get("device") != f.id {
			f.t.Errorf("check %q is not sealed", r.URL.RawQuery)
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		pt, err := f.open(otaproto.Topic(f.id, "check"), msg)
		if err != nil {
			f.t.Errorf("sealed check does not open for private/<id>/ota/check: %v", err)
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if q, err = url.ParseQuery(string(pt)); err != nil {
			f.t.Errorf("sealed check query %q: %v", pt, err)
		}
	} else if len(r.TLS.PeerCertificates) == 0 || q.Get("device") != f.id {
		f.t.Errorf("check without the device's certificate, or for device %q", q.Get("device"))
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	f.mu.Lock()
	f.checks = append(f.checks, q)
	n := len(f.checks)
	f.mu.Unlock()
	o := f.offers(n)
	if o == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(o)
}

func (f *fakeHTTPS) serveImage(w http.ResponseWriter, r *http.Request) {
	f.noteCert(r)
	if r.PathValue("sha") != f.sha || r.URL.Query().Get("token") != "fresh" {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	f.mu.Lock()
	f.ranges = append(f.ranges, r.Header.Get("Range"))
	n := len(f.ranges)
	drop := f.dropAt > 0 && !f.dropped && r.Header.Get("Range") == ""
	if drop {
		f.dropped = true
	}
	f.mu.Unlock()
	w.Header().Set("ETag", `"`+f.sha+`"`)
	if f.quirk != nil && f.quirk(n, w, r) {
		return
	}
	if drop {
		w.Header().Set("Content-Length", strconv.Itoa(len(f.image)))
		_, _ = w.Write(f.image[:f.dropAt])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection breaks mid-transfer
	}
	http.ServeContent(w, r, f.sha+".img", time.Time{}, bytes.NewReader(f.image))
}

func (f *fakeHTTPS) status(w http.ResponseWriter, r *http.Request) {
	f.noteCert(r)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		f.t.Error(err)
		return
	}
	if f.open != nil {
		if r.Header.Get("Content-Type") != otaEnvelopeContentType || r.URL.Query().Get("device") != f.id {
			f.t.Errorf("status report is not sealed (Content-Type %q)", r.Header.Get("Content-Type"))
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if body, err = f.open(otaproto.Topic(f.id, otaproto.TopicStatus), body); err != nil {
			f.t.Errorf("sealed status does not open for private/<id>/ota/status: %v", err)
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
	}
	var rep otaproto.Report
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		f.t.Errorf("status report %q: %v", body, err)
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	if err := rep.Validate(); err != nil {
		f.t.Errorf("status report %+v: %v", rep, err)
	}
	f.reports <- rep
	w.WriteHeader(http.StatusNoContent)
}

func TestOTAOverHTTPS(t *testing.T) {
	e := newEnv(t)
	key := releaseKey(t, firmware.KeyEd25519)
	rel := newRelease(t, key, testModel, "1.1.0", 2, 7, 50000, nil)
	f := newFakeHTTPS(t, e, rel.file)
	f.dropAt = rel.st.ImageSize / 3
	// The first check's URL has expired; the agent checks again for a
	// fresh one. Once installed, nothing more is offered.
	f.offers = func(n int) *otaproto.Offer {
		if n > 2 {
			return nil
		}
		o := rel.offer("r-https")
		o.URL = f.imageURL(map[int]string{1: "expired", 2: "fresh"}[n])
		return &o
	}

	c := connect(t, e.config(t))
	store := FileOTAStore{Dir: t.TempDir()}
	saveState(t, store, OTAState{Version: mustVersion(t, "1.0.0"), SecurityCounter: 1, Sequence: 3})
	in := &installs{}
	evs := make(events, 256)
	cfg := OTAConfig{
		ReleaseKey: key.Public(), Model: testModel, Store: store,
		Installer: func(_ context.Context, _ *firmware.Image, file []byte, st firmware.Statement) error {
			in.record(file, st)
			return nil // a real device reboots now
		},
		Transport: OTATransportHTTPS, HTTPSBase: f.srv.URL, BlockTimeout: 500 * time.Millisecond,
		Logger: testLogger(t), OnEvent: evs.on,
	}
	a, err := c.OTA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}

	dl := expectDownload(t, f.reports, rel.st.ImageSize)
	if dl[0].Offset != 0 || dl[0].Rollout != "r-https" {
		t.Errorf("first downloading report %+v", dl[0])
	}
	expectReport(t, f.reports, otaproto.StateInstalling)
	awaitIdle(t, a) // "installing" is reported before the Installer runs
	if in.count() != 1 || !bytes.Equal(in.files[0], rel.file) {
		t.Fatalf("installer got %d images; want exactly the signed image", in.count())
	}
	f.mu.Lock()
	checks, ranges := slices.Clone(f.checks), slices.Clone(f.ranges)
	f.mu.Unlock()
	if len(checks) != 2 {
		t.Fatalf("%d checks, want 2 (the second for a fresh URL)", len(checks))
	}
	if q := checks[0]; q.Get("version") != "1.0.0+0" || q.Get("security_counter") != "1" || q.Get("sequence") != "3" {
		t.Errorf("check query %v", q)
	}
	if len(ranges) != 2 || ranges[0] != "" || !strings.HasPrefix(ranges[1], "bytes=") {
		t.Fatalf("image requests with Range %q, want a full GET and then one resuming", ranges)
	}
	from, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(ranges[1], "bytes="), "-"), 10, 64)
	if err != nil || from <= 0 || from > f.dropAt {
		t.Errorf("resumed from %q, want from the broken transfer's end (at most %d)", ranges[1], f.dropAt)
	}
	if st := a.State(); st.Pending == nil || st.Pending.Version != rel.st.Version || st.Accepted != 7 || st.Version != mustVersion(t, "1.0.0") {
		t.Errorf("state after installing: %+v", st)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	// The device reboots into the new image: the next agent learns it from
	// Running and tells Warden in its check.
	cfg.Running = func() (firmware.Version, uint32, error) { return rel.st.Version, rel.st.SecurityCounter, nil }
	a2, err := c.OTA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	if err := a2.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if ev := evs.await(t, otaproto.StateBooted); ev.Version != rel.st.Version || ev.Rollout != "r-https" {
		t.Errorf("booted event %+v", ev)
	}
	f.mu.Lock()
	last := f.checks[len(f.checks)-1]
	f.mu.Unlock()
	if last.Get("version") != "1.1.0+0" || last.Get("security_counter") != "2" || last.Get("sequence") != "7" {
		t.Errorf("check after the reboot: %v", last)
	}
	want := OTAState{Version: rel.st.Version, SecurityCounter: 2, Sequence: 7, Accepted: 7}
	if st := a2.State(); !sameOTAState(st, want) {
		t.Errorf("state after the reboot %+v, want %+v", st, want)
	}
}

// TestOTAHTTPSServerQuirks covers the image server's answers a download
// must survive, or give up on.
func TestOTAHTTPSServerQuirks(t *testing.T) {
	key := releaseKey(t, firmware.KeyEd25519)
	rel := newRelease(t, key, testModel, "1.1.0", 2, 7, 40000, nil)
	third := rel.st.ImageSize / 3
	for _, tc := range []struct {
		name    string
		partial int64 // bytes of the image already in the store
		quirk   func(n int, w http.ResponseWriter, r *http.Request) bool
		fail    string // the failed report's reason contains it; "" for success
	}{
		{name: "ignores Range", partial: third, quirk: func(n int, w http.ResponseWriter, r *http.Request) bool {
			r.Header.Del("Range") // answer 200 with the whole image
			return false
		}},
		{name: "range not satisfiable", partial: third, quirk: func(n int, w http.ResponseWriter, r *http.Request) bool {
			if n == 1 {
				w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
				return true
			}
			return false
		}},
		{name: "stalls", quirk: func(n int, w http.ResponseWriter, r *http.Request) bool {
			if n > 1 {
				return false
			}
			w.Header().Set("Content-Length", strconv.FormatInt(rel.st.ImageSize, 10))
			_, _ = w.Write(rel.file[:third])
			w.(http.Flusher).Flush()
			<-r.Context().Done() // nothing more until the device gives up
			return true
		}},
		{name: "unavailable once", quirk: func(n int, w http.ResponseWriter, r *http.Request) bool {
			if n == 1 {
				http.Error(w, "busy", http.StatusServiceUnavailable)
				return true
			}
			return false
		}},
		{name: "longer than the statement", quirk: func(n int, w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Length", strconv.FormatInt(rel.st.ImageSize+1, 10))
			_, _ = w.Write(append(bytes.Clone(rel.file), 0))
			return true
		}, fail: "the statement says"},
		{name: "gone", quirk: func(n int, w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, "not found", http.StatusNotFound)
			return true
		}, fail: "404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			f := newFakeHTTPS(t, e, rel.file)
			f.quirk = tc.quirk
			f.offers = func(n int) *otaproto.Offer {
				if n > 1 {
					return nil
				}
				o := rel.offer("r")
				o.URL = f.imageURL("fresh")
				return &o
			}
			store := FileOTAStore{Dir: t.TempDir()}
			saveState(t, store, OTAState{Version: mustVersion(t, "1.0.0"), SecurityCounter: 1, Sequence: 3})
			if tc.partial > 0 {
				d, err := store.OpenDownload(rel.sha)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := d.Write(rel.file[:tc.partial]); err != nil {
					t.Fatal(err)
				}
				_ = d.Close()
			}
			c := connect(t, e.config(t))
			in := &installs{}
			a := startAgent(t, c, OTAConfig{
				ReleaseKey: key.Public(), Model: testModel, Store: store,
				Installer: func(_ context.Context, _ *firmware.Image, file []byte, st firmware.Statement) error {
					in.record(file, st)
					return nil
				},
				Transport: OTATransportHTTPS, HTTPSBase: f.srv.URL, BlockTimeout: 300 * time.Millisecond, Logger: testLogger(t),
			})
			var r otaproto.Report
			for r = nextReport(t, f.reports); r.State == otaproto.StateDownloading || r.State == otaproto.StateVerified; r = nextReport(t, f.reports) {
			}
			awaitIdle(t, a)
			if tc.fail != "" {
				if r.State != otaproto.StateFailed || !strings.HasPrefix(r.Reason, "download: ") || !strings.Contains(r.Reason, tc.fail) {
					t.Errorf("report %+v, want failed: download: ...%s...", r, tc.fail)
				}
				if in.count() != 0 {
					t.Error("the installer was called")
				}
				return
			}
			if r.State != otaproto.StateInstalling {
				t.Fatalf("report %+v, want installing", r)
			}
			if in.count() != 1 || !bytes.Equal(in.files[0], rel.file) {
				t.Fatalf("installer got %d images; want exactly the signed image", in.count())
			}
		})
	}
}

// standInOpener opens an envelope device's sealed uplinks as Warden does,
// for any topic.
func standInOpener(si *standIn) func(topic string, msg []byte) ([]byte, error) {
	var mu sync.Mutex
	return func(topic string, msg []byte) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		h, err := envelope.Parse(msg)
		if err != nil {
			return nil, err
		}
		keys, err := si.keys(0, envelope.Uplink)
		if err != nil {
			return nil, err
		}
		w := si.window(0)
		if err := w.Check(h.Seq); err != nil {
			return nil, err
		}
		pt, h, err := envelope.Open(keys, topic, msg)
		if err != nil {
			return nil, err
		}
		return pt, w.Commit(h.Seq)
	}
}

// TestOTAEnvelopeDevice runs updates for an envelope device on the plain
// listener, without a certificate: every OTA message it sends is sealed
// for its topic, over MQTT and over HTTPS.
func TestOTAEnvelopeDevice(t *testing.T) {
	key := releaseKey(t, firmware.KeyECDSAP256)
	rel := newRelease(t, key, testModel, "2.0.0", 1, 1, 3000, nil)
	for _, transport := range []string{OTATransportMQTT, OTATransportHTTPS} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			e, si := newEnvelopeEnv(t, envelope.CCM8)
			open := standInOpener(si)
			c := connect(t, e.plainConfig(t, si.envelope(t)))
			in := &installs{}
			var a *Agent
			cfg := OTAConfig{
				ReleaseKey: key.Public(), Model: testModel, Store: FileOTAStore{Dir: t.TempDir()},
				Installer: func(ctx context.Context, _ *firmware.Image, file []byte, st firmware.Statement) error {
					in.record(file, st)
					return a.Booted(ctx, st.Version, st.SecurityCounter, st.Sequence)
				},
				Transport: transport, BlockTimeout: time.Second, Logger: testLogger(t),
			}
			var reports chan otaproto.Report
			var fh *fakeHTTPS
			if transport == OTATransportMQTT {
				srv := newFakeOTA(t, e.broker, e.id, open)
				o := rel.offer("r-env")
				srv.setOffer(&o, rel.file)
				reports = srv.reports
			} else {
				fh = newFakeHTTPS(t, e, rel.file)
				fh.open = open
				fh.offers = func(n int) *otaproto.Offer {
					if n > 1 {
						return nil
					}
					o := rel.offer("r-env")
					o.URL = fh.imageURL("fresh")
					return &o
				}
				reports = fh.reports
				cfg.HTTPSBase, cfg.RootCAs = fh.srv.URL, e.ca.pool
			}
			a = startAgent(t, c, cfg)

			if transport == OTATransportMQTT {
				expectReport(t, reports, otaproto.StateCurrent)
			}
			expectDownload(t, reports, rel.st.ImageSize)
			expectReport(t, reports, otaproto.StateInstalling)
			if r := expectReport(t, reports, otaproto.StateBooted); r.Version != "2.0.0+0" {
				t.Errorf("booted report %+v", r)
			}
			if in.count() != 1 || !bytes.Equal(in.files[0], rel.file) {
				t.Fatalf("installer got %d images; want exactly the signed image", in.count())
			}
			if fh != nil {
				fh.mu.Lock()
				certs := slices.Clone(fh.certs)
				fh.mu.Unlock()
				if slices.Contains(certs, true) {
					t.Errorf("a device without a certificate sent one: %v", certs)
				}
			}
		})
	}
}

func TestOTAConfigValidation(t *testing.T) {
	e := newEnv(t)
	c := connect(t, e.config(t))
	key := releaseKey(t, firmware.KeyEd25519)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good := func() OTAConfig {
		return OTAConfig{ReleaseKey: key.Public(), Model: testModel, Store: FileOTAStore{Dir: t.TempDir()},
			Installer: func(context.Context, *firmware.Image, []byte, firmware.Statement) error { return nil }}
	}
	cases := []struct {
		name string
		mod  func(*OTAConfig)
		want string
	}{
		{"no release key", func(c *OTAConfig) { c.ReleaseKey = nil }, "ReleaseKey is nil"},
		{"P-384 release key", func(c *OTAConfig) { c.ReleaseKey = p384.Public() }, "ReleaseKey"},
		{"no model", func(c *OTAConfig) { c.Model = "" }, "Model is empty"},
		{"no store", func(c *OTAConfig) { c.Store = nil }, "Store is nil"},
		{"no installer", func(c *OTAConfig) { c.Installer = nil }, "Installer is nil"},
		{"unknown transport", func(c *OTAConfig) { c.Transport = "coap" }, "Transport"},
		{"https without base", func(c *OTAConfig) { c.Transport = OTATransportHTTPS }, "HTTPSBase is empty"},
		{"plain http base", func(c *OTAConfig) { c.Transport, c.HTTPSBase = OTATransportHTTPS, "http://warden.example" }, "not an https://"},
		{"base with a query", func(c *OTAConfig) { c.Transport, c.HTTPSBase = OTATransportHTTPS, "https://warden.example/?x=1" }, "query"},
		{"base without https transport", func(c *OTAConfig) { c.HTTPSBase = "https://warden.example" }, "Transport is not"},
		{"block size too large", func(c *OTAConfig) { c.BlockSize = otaproto.MaxBlockSize + 1 }, "BlockSize"},
		{"negative block timeout", func(c *OTAConfig) { c.BlockTimeout = -time.Second }, "BlockTimeout"},
		{"negative retries", func(c *OTAConfig) { c.Retries = -1 }, "Retries"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good()
			tc.mod(&cfg)
			_, err := c.OTA(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("OTA: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}

	a, err := c.OTA(good())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.OTA(good()); err == nil {
		t.Error("a second agent on the same client was accepted")
	}
	if err := a.Check(testContext(t)); err == nil {
		t.Error("Check before Start succeeded")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(testContext(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v, want ErrClosed", err)
	}
	b, err := c.OTA(good())
	if err != nil {
		t.Fatalf("a new agent after Close: %v", err)
	}
	_ = b.Close()

	// A plain-only envelope device has no root to check an HTTPS server
	// against unless OTAConfig.RootCAs gives one.
	ee, si := newEnvelopeEnv(t, envelope.CCM8)
	pc := connect(t, ee.plainConfig(t, si.envelope(t)))
	cfg := good()
	cfg.Transport, cfg.HTTPSBase = OTATransportHTTPS, "https://warden.example"
	if _, err := pc.OTA(cfg); err == nil || !strings.Contains(err.Error(), "RootCAs") {
		t.Errorf("HTTPS transport without any root: %v", err)
	}
	cfg.RootCAs = ee.ca.pool
	pa, err := pc.OTA(cfg)
	if err != nil {
		t.Fatalf("HTTPS transport with OTAConfig.RootCAs: %v", err)
	}
	_ = pa.Close()
}

func TestOTAStartSettlesPendingInstall(t *testing.T) {
	e := newEnv(t)
	c := connect(t, e.config(t))
	key := releaseKey(t, firmware.KeyEd25519)
	old, installed := mustVersion(t, "1.0.0"), mustVersion(t, "1.1.0")
	sha := strings.Repeat("ab", 32)
	pending := OTAState{Version: old, SecurityCounter: 1, Sequence: 3, Accepted: 7,
		Pending: &OTAPending{Rollout: "r", SHA256: sha, Version: installed, SecurityCounter: 2, Sequence: 7}}

	for _, tc := range []struct {
		name    string
		running firmware.Version
		event   string
		want    OTAState
	}{
		{"booted", installed, otaproto.StateBooted, OTAState{Version: installed, SecurityCounter: 2, Sequence: 7, Accepted: 7}},
		{"rolled back", old, otaproto.StateRolledBack, OTAState{Version: old, SecurityCounter: 1, Sequence: 3, Accepted: 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFakeOTA(t, e.broker, e.id, nil)
			store := FileOTAStore{Dir: t.TempDir()}
			saveState(t, store, pending)
			evs := make(events, 16)
			a := startAgent(t, c, OTAConfig{
				ReleaseKey: key.Public(), Model: testModel, Store: store,
				Installer: func(context.Context, *firmware.Image, []byte, firmware.Statement) error { return errors.New("unused") },
				Running: func() (firmware.Version, uint32, error) {
					return tc.running, 1, nil // a reader reporting a low counter does not lower the floor
				},
				Logger: testLogger(t), OnEvent: evs.on,
			})
			ev := evs.await(t, tc.event)
			if ev.Rollout != "r" || ev.SHA256 != sha || ev.Version != tc.running {
				t.Errorf("event %+v", ev)
			}
			if tc.event == otaproto.StateRolledBack && ev.Err == nil {
				t.Error("rolled-back event without a reason")
			}
			if r := expectReport(t, srv.reports, otaproto.StateCurrent); r.Version != tc.running.String() {
				t.Errorf("current report %+v, want version %s", r, tc.running)
			}
			if st, err := store.Load(); err != nil || !sameOTAState(st, tc.want) {
				t.Errorf("stored state %+v (%v), want %+v", st, err, tc.want)
			}
			_ = a.Close()
			_ = srv.b.srv.Unsubscribe("private/"+e.id+"/ota/+", 11)
		})
	}
}

func TestFileOTAStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ota")
	s := FileOTAStore{Dir: dir}
	st, err := s.Load()
	if err != nil || !sameOTAState(st, OTAState{}) {
		t.Fatalf("Load of an empty store: %+v, %v", st, err)
	}
	want := OTAState{Version: mustVersion(t, "1.2.3+4"), SecurityCounter: 5, Sequence: 6, Accepted: 8,
		Pending: &OTAPending{Rollout: "r1", SHA256: strings.Repeat("0f", 32), Version: mustVersion(t, "1.3.0"), SecurityCounter: 6, Sequence: 8}}
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, otaStateFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file: %v, %v; want mode 0600", fi.Mode(), err)
	}
	if got, err := s.Load(); err != nil || !sameOTAState(got, want) {
		t.Errorf("Load = %+v, %v; want %+v", got, err, want)
	}

	sha1, sha2 := strings.Repeat("11", 32), strings.Repeat("22", 32)
	d, err := s.OpenDownload(sha1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Write([]byte("hello, ")); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	_ = d.Close()
	if d, err = s.OpenDownload(sha1); err != nil {
		t.Fatal(err)
	}
	if d.Size() != 7 {
		t.Errorf("resumed download holds %d bytes, want 7", d.Size())
	}
	if _, err := d.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	if b, err := d.Bytes(); err != nil || string(b) != "hello, world" {
		t.Errorf("Bytes = %q, %v", b, err)
	}
	if err := d.Truncate(5); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Write([]byte("!")); err != nil {
		t.Fatal(err)
	}
	if b, _ := d.Bytes(); string(b) != "hello!" {
		t.Errorf("after Truncate(5) and a write: %q", b)
	}
	_ = d.Close()

	// Another image's download replaces it.
	if d, err = s.OpenDownload(sha2); err != nil {
		t.Fatal(err)
	}
	if d.Size() != 0 {
		t.Errorf("another image's download starts with %d bytes", d.Size())
	}
	_ = d.Close()
	if b, _ := os.ReadFile(filepath.Join(dir, otaDownloadSHA)); strings.TrimSpace(string(b)) != sha2 {
		t.Errorf("download.sha256 = %q, want %s", b, sha2)
	}
	if err := s.RemoveDownload(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{otaDownloadFile, otaDownloadSHA} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after RemoveDownload: %v", name, err)
		}
	}
	if err := s.RemoveDownload(); err != nil {
		t.Errorf("RemoveDownload with nothing to remove: %v", err)
	}
	if _, err := s.OpenDownload("../../etc/passwd"); err == nil {
		t.Error("OpenDownload accepted a name that is not a SHA-256")
	}

	if err := os.WriteFile(filepath.Join(dir, otaStateFile), []byte(`{"version":"1.0.0","surprise":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); err == nil {
		t.Error("Load accepted a state file with an unknown field")
	}
	if _, err := (FileOTAStore{}).Load(); err == nil {
		t.Error("Load without a directory succeeded")
	}
}

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in                    string
		first, last, complete int64
		ok                    bool
	}{
		{"bytes 0-99/100", 0, 99, 100, true},
		{"bytes 42-42/43", 42, 42, 43, true},
		{"bytes 007-8/09", 7, 8, 9, true}, // RFC 9110 allows leading zeros
		{"bytes 10-99/*", 0, 0, 0, false},
		{"bytes */100", 0, 0, 0, false},
		{"bytes 10-5/100", 0, 0, 0, false},
		{"bytes 0-100/100", 0, 0, 0, false},
		{"bytes -1-5/100", 0, 0, 0, false},
		{"bytes +1-5/100", 0, 0, 0, false},
		{"bytes 1 -5/100", 0, 0, 0, false},
		{"items 0-1/2", 0, 0, 0, false},
		{"bytes 0-1/99999999999999999999", 0, 0, 0, false},
		{"", 0, 0, 0, false},
	} {
		f, l, c, err := parseContentRange(tc.in)
		if (err == nil) != tc.ok || tc.ok && (f != tc.first || l != tc.last || c != tc.complete) {
			t.Errorf("parseContentRange(%q) = %d, %d, %d, %v", tc.in, f, l, c, err)
		}
	}
}

func TestTruncateReason(t *testing.T) {
	long := strings.Repeat("a", otaproto.MaxReasonLength-1) + "é" // é straddles the limit
	got := truncateReason(long)
	if len(got) != otaproto.MaxReasonLength-1 || !strings.HasPrefix(long, got) {
		t.Errorf("truncateReason cut %d bytes to %d", len(long), len(got))
	}
	if s := "short"; truncateReason(s) != s {
		t.Error("truncateReason changed a short reason")
	}
}

// FuzzParseContentRange feeds arbitrary Content-Range values, which come
// from the image server, to the parser: it must never panic, and what it
// accepts must be a range inside the complete length that prints back as
// the input.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-99/100", "bytes 42-42/43", "bytes */100", "bytes 10-5/100", "bytes 0-1/99999999999999999999", "bytes 00-1/2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		first, last, complete, err := parseContentRange(s)
		if err != nil {
			return
		}
		if first < 0 || first > last || last >= complete {
			t.Fatalf("parseContentRange(%q) = %d, %d, %d", s, first, last, complete)
		}
		// Leading zeros are valid (RFC 9110 1*DIGIT); anything else must
		// be the canonical form.
		canon := fmt.Sprintf("bytes %d-%d/%d", first, last, complete)
		trim := func(s string) string {
			for strings.HasPrefix(s, "0") && len(s) > 1 && s[1] >= '0' && s[1] <= '9' {
				s = s[1:]
			}
			return s
		}
		rest, _ := strings.CutPrefix(s, "bytes ")
		r, total, _ := strings.Cut(rest, "/")
		a, b, _ := strings.Cut(r, "-")
		if back := "bytes " + trim(a) + "-" + trim(b) + "/" + trim(total); back != canon {
			t.Fatalf("parseContentRange(%q) = %d, %d, %d: not what it says", s, first, last, complete)
		}
	})
}

// FuzzDecodeOTAState feeds arbitrary state files to the decoder: it must
// never panic, and a state it accepts must survive encoding and decoding.
func FuzzDecodeOTAState(f *testing.F) {
	f.Add([]byte(`{"version":"1.2.3+4","security_counter":5,"sequence":6,"accepted":8}`))
	f.Add([]byte(`{"version":"1.2.3+4","security_counter":5,"sequence":6,"accepted":8,"pending":{"rollout":"r","sha256":"` +
		strings.Repeat("ab", 32) + `","version":"1.3.0+0","security_counter":6,"sequence":8}}`))
	f.Add([]byte(`{"version":"01.2.3"}`))
	f.Add([]byte(`{"version":"1.2.3"} {}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeOTAState(b)
		if err != nil {
			return
		}
		if st.Accepted < st.Sequence {
			t.Fatalf("decoded Accepted %d below Sequence %d", st.Accepted, st.Sequence)
		}
		enc, err := encodeOTAState(st)
		if err != nil {
			t.Fatalf("encode a decoded state: %v", err)
		}
		again, err := decodeOTAState(enc)
		if err != nil || !sameOTAState(st, again) {
			t.Fatalf("state %+v does not survive a round trip: %+v, %v", st, again, err)
		}
	})
}
