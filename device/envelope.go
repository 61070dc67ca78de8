package device

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/fileutil"
)

// RekeyChannel is the downlink channel on which Warden sends an envelope
// device its next key epoch. The SDK subscribes to it by itself and handles
// it; it is never delivered to a handler, and SubscribeDown refuses it.
const RekeyChannel = "_rekey"

// rekeyMessageSize is the plaintext of a rekey message: u32(new epoch) ‖
// the new 16-byte master secret.
const rekeyMessageSize = 4 + envelope.MasterSecretSize

// Reasons for dropping a sealed downlink that are the SDK's own, beside the
// envelope package's (malformed, downgrade, unknown-key, replay, bad-tag,
// bad-padding). They appear in EnvelopeStats.Dropped and are passed to
// Envelope.OnDropped.
const (
	// ReasonNotSaved: the downlink opened, but its replay window could not
	// be saved to Envelope.DownlinkWindows. It is dropped so that it cannot
	// be accepted a second time after a restart.
	ReasonNotSaved envelope.Reason = "window-not-saved"
	// ReasonRekeyRefused: a message on RekeyChannel was not applied: its
	// content is not a valid rekey for the current epoch, the device is
	// sign-p256 or cannot accept rekeys (no OnRekey), or Envelope.NewCounter
	// or Envelope.OnRekey failed. The device stays on its epoch; Warden
	// resends the pending key until the device moves to it.
	ReasonRekeyRefused envelope.Reason = "rekey-refused"
)

// Envelope makes the client an envelope device (docs/envelope.md): it seals
// its uplinks and opens Warden's sealed downlinks itself, so it can use
// Warden's plain mqtt:// listener, and with Required its messages stay
// protected end to end past the broker even over TLS.
//
// The values come from provisioning: `warden device add ID --envelope`
// writes them to a bundle that LoadEnvelopeBundle reads; Counter and, to
// accept rekeys, NewCounter and OnRekey are the application's.
type Envelope struct {
	// Suite is the device's suite, as provisioned.
	Suite envelope.Suite

	// Epoch is the key epoch Secret belongs to: 0 at provisioning, then
	// whatever the last rekey moved the device to (OnRekey).
	Epoch uint32

	// Secret is the 16-byte master secret of Epoch; nil for sign-p256,
	// which signs with Config.Certificate's private key instead. The
	// client keeps its own copy.
	Secret []byte

	// Counter hands out the uplink sequence numbers of Epoch, to messages
	// and to CONNECT passwords alike. It is required. Build it over an
	// envelope.FileCounterStore (one file per epoch), never over memory
	// alone: the store persists ahead, so a reboot never reuses a number,
	// which in ccm-8 would reuse a nonce. Give each Counter to one client
	// only.
	Counter *envelope.Counter

	// NewCounter returns the uplink counter for a new epoch after a rekey
	// (a fresh FileCounterStore file per epoch). OnRekey must persist the
	// new epoch and secret durably before it returns; if it fails, the
	// client stays on its epoch. Both are required for the device to
	// accept rekeys (set both or neither) and unused for sign-p256.
	// NewCounter is called first, then OnRekey, then the client switches;
	// both run on the receive goroutine.
	NewCounter func(epoch uint32) (*envelope.Counter, error)
	OnRekey    func(epoch uint32, secret []byte) error

	// DownlinkWindows persists the downlink replay window of each epoch.
	// With nil the windows live in memory only: after a restart of the
	// device, a recorded downlink of the current epoch (an old command)
	// could be replayed to it and would be accepted once more. Use
	// NewFileWindowStore unless a replayed command is harmless.
	DownlinkWindows WindowStore

	// Required seals uplinks over TLS too, as Warden expects of a device
	// whose envelope policy is "required". It must match that policy.
	// Without it, uplinks are sealed only when every server is plain
	// mqtt://; a server list that mixes plain and TLS needs Required.
	Required bool

	// ServerKey is Warden's envelope public key, which verifies downlinks
	// to a sign-p256 device (nil for the other suites). Without it the
	// device cannot open any downlink, and Warden refuses to send
	// downlinks to a sign-p256 device it holds no envelope key for.
	ServerKey *ecdsa.PublicKey

	// OnDropped, if set, is called for every sealed downlink the client
	// drops, with its channel and the reason. It runs on the receive
	// goroutine and must not block. Reasons come from the envelope
	// package or are ReasonNotSaved and ReasonRekeyRefused.
	OnDropped func(channel string, reason envelope.Reason)
}

// WindowStore keeps the downlink replay window of each key epoch (the 18
// bytes of envelope.ReplayWindow.MarshalBinary) in non-volatile storage.
type WindowStore interface {
	// Load returns the saved window of epoch, or nil if none was saved.
	Load(epoch uint32) ([]byte, error)
	// Save durably replaces the window of epoch. It runs for every
	// accepted downlink, before the downlink is handed to its handler.
	Save(epoch uint32, window []byte) error
}

// EnvelopeStats counts what an envelope client sealed, opened and dropped.
type EnvelopeStats struct {
	// Epoch is the key epoch uplinks are sealed under now.
	Epoch uint32
	// Sealed counts sealed uplinks (CONNECT passwords not included).
	Sealed uint64
	// Opened counts sealed downlinks accepted: delivered to handlers, or
	// applied (or recognised as resent) rekeys.
	Opened uint64
	// Dropped counts sealed downlinks dropped, by reason.
	Dropped map[envelope.Reason]uint64
	// Rekeys counts rekeys applied.
	Rekeys uint64
}

// envelopeConfig is a validated Envelope.
type envelopeConfig struct {
	suite      envelope.Suite
	epoch      uint32
	secret     []byte // a copy; nil for sign-p256
	counter    *envelope.Counter
	newCounter func(uint32) (*envelope.Counter, error)
	onRekey    func(uint32, []byte) error
	windows    WindowStore
	sealUp     bool // seal PublishUp payloads
	serverKey  *ecdsa.PublicKey
	signer     crypto.Signer // sign-p256: Config.Certificate's key
	onDropped  func(string, envelope.Reason)
}

// validateEnvelope checks e for device id. plain and tlsToo say which kinds
// of server Config.Servers lists; signer is Config.Certificate's key, if any.
func validateEnvelope(e *Envelope, id string, plain, tlsToo bool, signer crypto.Signer) (*envelopeConfig, error) {
	ec := &envelopeConfig{
		suite:      e.Suite,
		epoch:      e.Epoch,
		counter:    e.Counter,
		newCounter: e.NewCounter,
		onRekey:    e.OnRekey,
		windows:    e.DownlinkWindows,
		serverKey:  e.ServerKey,
		onDropped:  e.OnDropped,
	}
	switch e.Suite {
	case envelope.LegacyCBCHMAC, envelope.CCM8:
		if len(e.Secret) != envelope.MasterSecretSize {
			return nil, fmt.Errorf("Config.Envelope.Secret is %d bytes; it must be the device's %d-byte master secret of epoch %d", len(e.Secret), envelope.MasterSecretSize, e.Epoch)
		}
		if e.ServerKey != nil {
			return nil, fmt.Errorf("Config.Envelope.ServerKey is set, but it is used by sign-p256 devices only, and this device is %v", e.Suite)
		}
		ec.secret = bytes.Clone(e.Secret)
	case envelope.SignP256:
		if len(e.Secret) != 0 {
			return nil, errors.New("Config.Envelope.Secret must be empty for sign-p256: the device signs with the private key of Config.Certificate")
		}
		if signer == nil {
			return nil, errors.New("Config.Certificate is empty, but a sign-p256 device signs its uplinks with the certificate's private key")
		}
		ec.signer = signer
	default:
		return nil, fmt.Errorf("Config.Envelope.Suite %v is not a suite; use envelope.LegacyCBCHMAC, envelope.CCM8 or envelope.SignP256", e.Suite)
	}
	if e.Counter == nil {
		return nil, errors.New("Config.Envelope.Counter is nil; give it an envelope.Counter over an envelope.FileCounterStore, so that a reboot never reuses a sequence number")
	}
	if (e.NewCounter == nil) != (e.OnRekey == nil) {
		return nil, errors.New("Config.Envelope.NewCounter and Config.Envelope.OnRekey work together: set both to accept rekeys, or neither")
	}
	if plain && tlsToo && !e.Required {
		return nil, errors.New("Config.Servers mixes plain mqtt:// and TLS servers, but Config.Envelope.Required is false: " +
			"Warden opens uplinks that arrive on its plain listener and passes uplinks over TLS through as they are, " +
			"so one PublishUp would be read differently depending on the server reached; " +
			"set Required (and the device's envelope policy to required) or list one kind of server")
	}
	ec.sealUp = e.Required || !tlsToo

	// Derive once here, so that a key problem is a configuration error.
	if _, err := ec.newEpochKeys(id, e.Epoch, e.Secret); err != nil {
		return nil, fmt.Errorf("Config.Envelope: %w", err)
	}
	return ec, nil
}

// epochKeys are the keys, counter and downlink replay window of one epoch.
type epochKeys struct {
	epoch   uint32
	secret  []byte                // nil for sign-p256; compared with a resent rekey
	up      *envelope.Keys        // seals uplinks and CONNECT passwords
	down    *envelope.Keys        // opens downlinks; nil: sign-p256 without ServerKey
	counter *envelope.Counter     // nil until assigned
	window  envelope.ReplayWindow // used under envelopeState.rmu only
}

// newEpochKeys derives the keys of epoch. It does not touch storage.
func (ec *envelopeConfig) newEpochKeys(id string, epoch uint32, secret []byte) (*epochKeys, error) {
	ek := &epochKeys{epoch: epoch}
	var err error
	if ec.suite == envelope.SignP256 {
		if ek.up, err = envelope.SignKeys(ec.signer, id, epoch, envelope.Uplink); err != nil {
			return nil, fmt.Errorf("sign-p256 signs with the private key of Config.Certificate: %w", err)
		}
		if ec.serverKey != nil {
			if ec.serverKey.X == nil || ec.serverKey.Y == nil {
				// envelope.VerifyKeys would dereference them.
				return nil, errors.New("ServerKey is not a P-256 public key (no point)")
			}
			if ek.down, err = envelope.VerifyKeys(ec.serverKey, id, epoch, envelope.Downlink); err != nil {
				return nil, fmt.Errorf("ServerKey: %w", err)
			}
		}
		return ek, nil
	}
	if ek.up, err = envelope.DeriveKeys(secret, id, epoch, ec.suite, envelope.Uplink); err != nil {
		return nil, err
	}
	if ek.down, err = envelope.DeriveKeys(secret, id, epoch, ec.suite, envelope.Downlink); err != nil {
		return nil, err
	}
	ek.secret = bytes.Clone(secret)
	return ek, nil
}

// envelopeState is an envelope client's keys and counters while it runs.
type envelopeState struct {
	cfg      *envelopeConfig
	id       string
	log      *slog.Logger
	logDrops rate.Sometimes // a flood of forgeries must not flood the log

	// rmu serialises downlink processing (open, window, rekey): paho
	// delivers on one goroutine per connection, but an old connection's
	// goroutine may still be finishing while a new one starts.
	rmu sync.Mutex

	mu        sync.Mutex
	cur       *epochKeys // uplinks are sealed under it
	prev      *epochKeys // the epoch before a rekey, until Warden uses cur
	sealed    uint64
	opened    uint64
	rekeys    uint64
	dropped   map[envelope.Reason]uint64
	warnedEnd bool // RekeySoon was reported for cur
}

// newEnvelopeState derives the configured epoch's keys and loads its
// downlink window.
func newEnvelopeState(ec *envelopeConfig, id string, log *slog.Logger) (*envelopeState, error) {
	ek, err := ec.newEpochKeys(id, ec.epoch, ec.secret)
	if err != nil {
		return nil, fmt.Errorf("Config.Envelope: %w", err)
	}
	if err := ec.loadWindow(ek); err != nil {
		return nil, err
	}
	ek.counter = ec.counter
	return &envelopeState{
		cfg:      ec,
		id:       id,
		log:      log,
		logDrops: rate.Sometimes{First: 10, Interval: time.Second},
		cur:      ek,
		dropped:  make(map[envelope.Reason]uint64),
	}, nil
}

func (ec *envelopeConfig) loadWindow(ek *epochKeys) error {
	if ec.windows == nil {
		return nil
	}
	b, err := ec.windows.Load(ek.epoch)
	if err != nil {
		return fmt.Errorf("load the downlink replay window of epoch %d: %w", ek.epoch, err)
	}
	if b == nil {
		return nil
	}
	if err := ek.window.UnmarshalBinary(b); err != nil {
		return fmt.Errorf("downlink replay window of epoch %d: %w; old downlinks could be replayed, so have Warden rekey the device (warden device rekey) rather than start with an empty window", ek.epoch, err)
	}
	return nil
}

// current returns the epoch uplinks are sealed under.
func (st *envelopeState) current() *epochKeys {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cur
}

// next takes the next uplink sequence number of the current epoch.
func (st *envelopeState) next() (*epochKeys, uint64, error) {
	ek := st.current()
	seq, err := ek.counter.Next()
	if err != nil {
		return nil, 0, err
	}
	if ek.counter.RekeySoon() {
		st.mu.Lock()
		warn := !st.warnedEnd && st.cur == ek
		st.warnedEnd = st.warnedEnd || warn
		st.mu.Unlock()
		if warn {
			st.log.Warn("half of the epoch's uplink sequence numbers are used; have Warden rekey the device (warden device rekey)", "epoch", ek.epoch)
		}
	}
	return ek, seq, nil
}

// seal seals an uplink payload for topic.
func (st *envelopeState) seal(topic string, payload []byte) ([]byte, error) {
	ek, seq, err := st.next()
	if err != nil {
		return nil, err
	}
	msg, err := envelope.Seal(ek.up, seq, topic, payload)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	st.sealed++
	st.mu.Unlock()
	return msg, nil
}

// connectPassword makes the CONNECT password for a plain connection.
func (st *envelopeState) connectPassword() ([]byte, error) {
	ek, seq, err := st.next()
	if err != nil {
		return nil, err
	}
	return envelope.ConnectPassword(ek.up, seq)
}

// openDownlink opens a sealed downlink received on topic. ok is false if it
// was dropped (and then logged, counted and reported).
func (st *envelopeState) openDownlink(topic, channel string, msg []byte) (pt []byte, h envelope.Header, epoch uint32, ok bool) {
	st.rmu.Lock()
	defer st.rmu.Unlock()
	pt, h, ek, reason, detail := st.open(topic, msg)
	if reason != "" {
		st.drop(channel, reason, detail)
		return nil, envelope.Header{}, 0, false
	}
	st.mu.Lock()
	st.opened++
	st.mu.Unlock()
	return pt, h, ek.epoch, true
}

// open runs docs/envelope.md's "Receiving" steps for a downlink. The caller
// holds rmu. On failure it returns the reason and a detail for the log.
func (st *envelopeState) open(topic string, msg []byte) ([]byte, envelope.Header, *epochKeys, envelope.Reason, string) {
	fail := func(err error) ([]byte, envelope.Header, *epochKeys, envelope.Reason, string) {
		r := envelope.ReasonOf(err)
		if r == "" {
			r = envelope.ReasonMalformed
		}
		return nil, envelope.Header{}, nil, r, err.Error()
	}
	h, err := envelope.Parse(msg)
	if err != nil {
		return fail(err)
	}
	if err := envelope.RequireSuite(h.Suite, st.cfg.suite); err != nil {
		return fail(err)
	}
	st.mu.Lock()
	cur, prev := st.cur, st.prev
	st.mu.Unlock()
	var ek *epochKeys
	switch {
	case h.MatchesEpoch(cur.epoch):
		ek = cur
	case prev != nil && h.MatchesEpoch(prev.epoch):
		ek = prev
	default:
		return nil, envelope.Header{}, nil, envelope.ReasonUnknownKey, "the key ID names none of the device's epochs"
	}
	if ek.down == nil {
		return nil, envelope.Header{}, nil, envelope.ReasonUnknownKey, "no Envelope.ServerKey to verify sign-p256 downlinks with"
	}
	if err := ek.window.Check(h.Seq); err != nil {
		return fail(err)
	}
	pt, h, err := envelope.Open(ek.down, topic, msg)
	if err != nil {
		return fail(err)
	}
	w := ek.window
	if err := w.Commit(h.Seq); err != nil {
		clear(pt)
		return fail(err)
	}
	if st.cfg.windows != nil {
		b, _ := w.MarshalBinary() // cannot fail
		if err := st.cfg.windows.Save(ek.epoch, b); err != nil {
			clear(pt)
			return nil, envelope.Header{}, nil, ReasonNotSaved, err.Error()
		}
	}
	ek.window = w
	if ek == cur && prev != nil {
		// Warden seals downlinks under the epoch it holds active; one under
		// the new epoch means it has confirmed the rekey, and the old
		// epoch's downlink keys would only serve an attacker who stole them.
		st.mu.Lock()
		if st.prev == prev {
			st.prev = nil
		}
		st.mu.Unlock()
		clear(prev.secret)
		st.log.Info("Warden uses the new key epoch; the previous epoch's downlinks are no longer accepted", "epoch", cur.epoch, "previous_epoch", prev.epoch)
	}
	return pt, h, ek, "", ""
}

// drop counts, reports and (rate-limited) logs a dropped downlink. Never a
// payload or a key: detail is an envelope error or the SDK's own text.
func (st *envelopeState) drop(channel string, reason envelope.Reason, detail string) {
	st.mu.Lock()
	st.dropped[reason]++
	st.mu.Unlock()
	st.logDrops.Do(func() {
		st.log.Warn("sealed downlink dropped", "channel", channel, "reason", string(reason), "detail", detail)
	})
	if st.cfg.onDropped != nil {
		st.cfg.onDropped(channel, reason)
	}
}

// refuseRekey drops a rekey message that opened but cannot be applied.
// This is never a forgery (it authenticated), so it is logged at error
// level, without rate limiting beyond the drop log's.
func (st *envelopeState) refuseRekey(format string, args ...any) {
	detail := fmt.Sprintf(format, args...)
	st.log.Error("rekey refused; the device stays on its key epoch", "detail", detail)
	st.drop(RekeyChannel, ReasonRekeyRefused, detail)
}

// handleRekey opens and applies a message on RekeyChannel.
func (st *envelopeState) handleRekey(topic string, msg []byte) {
	st.rmu.Lock()
	defer st.rmu.Unlock()
	if st.cfg.suite == envelope.SignP256 {
		st.drop(RekeyChannel, ReasonRekeyRefused, "sign-p256 devices are not rekeyed with rekey messages")
		return
	}
	pt, _, sealedUnder, reason, detail := st.open(topic, msg)
	if reason != "" {
		st.drop(RekeyChannel, reason, detail)
		return
	}
	defer clear(pt)
	if len(pt) != rekeyMessageSize {
		st.refuseRekey("the rekey message carries %d bytes, not %d (epoch and master secret)", len(pt), rekeyMessageSize)
		return
	}
	epoch, secret := binary.BigEndian.Uint32(pt), pt[4:]
	cur := st.current()
	if sealedUnder != cur {
		// Warden resends a rekey until the device uses the new epoch, still
		// sealed under the old one. The same epoch and secret again is
		// that resend, already applied.
		if epoch == cur.epoch && subtle.ConstantTimeCompare(secret, cur.secret) == 1 {
			st.mu.Lock()
			st.opened++
			st.mu.Unlock()
			st.log.Debug("rekey resent for the epoch already in use; nothing to do", "epoch", epoch)
			return
		}
		st.refuseRekey("a rekey sealed under the previous epoch %d names epoch %d, which is not the current epoch %d with its secret", sealedUnder.epoch, epoch, cur.epoch)
		return
	}
	switch {
	case epoch <= cur.epoch:
		st.refuseRekey("the rekey names epoch %d, not one above the current %d", epoch, cur.epoch)
		return
	case (epoch-cur.epoch)%256 == 0:
		st.refuseRekey("the rekey names epoch %d, whose key ID equals the current epoch %d's", epoch, cur.epoch)
		return
	case st.cfg.onRekey == nil:
		st.refuseRekey("Config.Envelope.OnRekey and NewCounter are not set, so this device cannot accept rekeys (epoch %d offered)", epoch)
		return
	}

	next, err := st.cfg.newEpochKeys(st.id, epoch, secret)
	if err != nil {
		st.refuseRekey("derive the keys of epoch %d: %v", epoch, err)
		return
	}
	if err := st.cfg.loadWindow(next); err != nil {
		st.refuseRekey("%v", err)
		return
	}
	counter, err := st.cfg.newCounter(epoch)
	if err == nil && counter == nil {
		err = errors.New("it returned no counter")
	}
	if err != nil {
		st.refuseRekey("Config.Envelope.NewCounter(%d): %v", epoch, err)
		return
	}
	next.counter = counter
	// The application persists the new secret before a single message is
	// sealed under it: a device that restarts must find the epoch its
	// last messages used.
	if err := st.cfg.onRekey(epoch, bytes.Clone(secret)); err != nil {
		st.refuseRekey("Config.Envelope.OnRekey(%d): %v", epoch, err)
		return
	}

	st.mu.Lock()
	old := st.prev
	st.prev, st.cur = cur, next
	st.opened++
	st.rekeys++
	st.warnedEnd = false
	st.mu.Unlock()
	if old != nil {
		clear(old.secret)
	}
	st.log.Info("rekeyed: uplinks are now sealed under the new key epoch; Warden confirms when it opens the first one", "epoch", epoch, "previous_epoch", cur.epoch)
}

// stats returns a copy of the counters.
func (st *envelopeState) stats() EnvelopeStats {
	st.mu.Lock()
	defer st.mu.Unlock()
	return EnvelopeStats{
		Epoch:   st.cur.epoch,
		Sealed:  st.sealed,
		Opened:  st.opened,
		Dropped: maps.Clone(st.dropped),
		Rekeys:  st.rekeys,
	}
}

// FileWindowStore is a WindowStore with one small file per epoch in a
// directory, written atomically (temporary file, fsync, rename, directory
// fsync) with mode 0600. Like a counter file, it must never be restored
// from an older copy: that would make old downlinks acceptable again.
type FileWindowStore struct {
	dir string
}

// NewFileWindowStore returns a store in dir; Save creates dir (mode 0700)
// if it does not exist.
func NewFileWindowStore(dir string) *FileWindowStore {
	return &FileWindowStore{dir: dir}
}

func (s *FileWindowStore) path(epoch uint32) string {
	return filepath.Join(s.dir, "downlink-window-"+strconv.FormatUint(uint64(epoch), 10))
}

// Load reads the window of epoch; a missing file is nil (a fresh window).
func (s *FileWindowStore) Load(epoch uint32) ([]byte, error) {
	b, err := os.ReadFile(s.path(epoch))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read downlink replay window: %w", err)
	}
	return b, nil
}

// Save replaces the window of epoch atomically and durably.
func (s *FileWindowStore) Save(epoch uint32, window []byte) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("save downlink replay window: %w", err)
	}
	if err := fileutil.WriteFileAtomic(s.path(epoch), window, 0o600); err != nil {
		return fmt.Errorf("save downlink replay window: %w", err)
	}
	return nil
}
