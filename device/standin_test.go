package device

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/envelope"
)

// standIn plays Warden's envelope side for one device, test-only: it checks
// CONNECT passwords on the plain listener (envelope.OpenConnectPassword and
// the uplink replay window, as docs/envelope.md says), opens the device's
// uplinks as an inline subscriber, and seals downlinks. It is deliberately
// small: the real pipeline is the server's.
type standIn struct {
	t     testing.TB
	b     *testBroker
	id    string
	suite envelope.Suite

	mu        sync.Mutex
	secrets   map[uint32][]byte // symmetric suites
	devKey    *ecdsa.PublicKey  // sign-p256: verifies uplinks
	serverKey *ecdsa.PrivateKey // sign-p256: signs downlinks
	upWindow  map[uint32]*envelope.ReplayWindow
	downSeq   map[uint32]uint64
	passwords [][]byte // every password presented, accepted or not

	connects chan connectResult // one per plain CONNECT
	uplinks  chan uplink        // one per message on private/<id>/up/#
}

type connectResult struct {
	epoch  uint32
	seq    uint64
	reason envelope.Reason // "" if accepted
}

// uplink is what the stand-in made of one uplink: opened, or not (reason)
// with the bytes as they arrived.
type uplink struct {
	channel string
	epoch   uint32
	seq     uint64
	payload []byte // the plaintext if sealed, else the raw bytes
	sealed  bool
	reason  envelope.Reason
}

func newStandIn(t testing.TB, b *testBroker, id string, suite envelope.Suite) *standIn {
	t.Helper()
	s := &standIn{
		t: t, b: b, id: id, suite: suite,
		secrets:  make(map[uint32][]byte),
		upWindow: make(map[uint32]*envelope.ReplayWindow),
		downSeq:  make(map[uint32]uint64),
		connects: make(chan connectResult, 64),
		uplinks:  make(chan uplink, 4096), // the broker must never block on it
	}
	if suite == envelope.SignP256 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		s.serverKey = k
	} else {
		s.addEpoch(0)
	}
	b.hook.mu.Lock()
	b.hook.plainAuth = s.checkPassword
	b.hook.mu.Unlock()
	if err := b.srv.Subscribe("private/"+id+"/up/#", 7, s.onUplink); err != nil {
		t.Fatal(err)
	}
	return s
}

// addEpoch gives the device a fresh master secret for epoch and returns it.
func (s *standIn) addEpoch(epoch uint32) []byte {
	secret, err := envelope.NewMasterSecret()
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets[epoch] = secret
	return secret
}

func (s *standIn) secret(epoch uint32) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.secrets[epoch]
}

func (s *standIn) keys(epoch uint32, dir envelope.Direction) (*envelope.Keys, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.suite == envelope.SignP256 {
		if dir == envelope.Uplink {
			return envelope.VerifyKeys(s.devKey, s.id, epoch, dir)
		}
		return envelope.SignKeys(s.serverKey, s.id, epoch, dir)
	}
	secret, ok := s.secrets[epoch]
	if !ok {
		return nil, fmt.Errorf("no secret for epoch %d", epoch)
	}
	return envelope.DeriveKeys(secret, s.id, epoch, s.suite, dir)
}

// epochOf picks the known epoch a header's key ID names.
func (s *standIn) epochOf(h envelope.Header) (uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.suite == envelope.SignP256 {
		return 0, h.MatchesEpoch(0)
	}
	for e := range s.secrets {
		if h.MatchesEpoch(e) {
			return e, true
		}
	}
	return 0, false
}

func (s *standIn) window(epoch uint32) *envelope.ReplayWindow {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.upWindow[epoch]
	if w == nil {
		w = &envelope.ReplayWindow{}
		s.upWindow[epoch] = w
	}
	return w
}

// checkPassword is the plain listener's CONNECT check.
func (s *standIn) checkPassword(clientID string, username, password []byte) bool {
	s.mu.Lock()
	s.passwords = append(s.passwords, append([]byte{}, password...))
	s.mu.Unlock()
	res := s.openPassword(clientID, username, password)
	s.connects <- res
	return res.reason == ""
}

func (s *standIn) openPassword(clientID string, username, password []byte) connectResult {
	if clientID != s.id || string(username) != s.id {
		return connectResult{reason: "wrong-user"}
	}
	h, _, err := envelope.ParseConnectPassword(password)
	if err != nil {
		return connectResult{reason: envelope.ReasonOf(err)}
	}
	epoch, ok := s.epochOf(h)
	if !ok {
		return connectResult{reason: envelope.ReasonUnknownKey}
	}
	w := s.window(epoch)
	if err := w.Check(h.Seq); err != nil {
		return connectResult{epoch: epoch, seq: h.Seq, reason: envelope.ReasonOf(err)}
	}
	keys, err := s.keys(epoch, envelope.Uplink)
	if err != nil {
		return connectResult{reason: envelope.ReasonUnknownKey}
	}
	if _, err := envelope.OpenConnectPassword(keys, password); err != nil {
		return connectResult{epoch: epoch, seq: h.Seq, reason: envelope.ReasonOf(err)}
	}
	if err := w.Commit(h.Seq); err != nil {
		return connectResult{epoch: epoch, seq: h.Seq, reason: envelope.ReasonOf(err)}
	}
	return connectResult{epoch: epoch, seq: h.Seq}
}

// onUplink opens what the device publishes in its up subtree. The broker
// calls it synchronously, and in order.
func (s *standIn) onUplink(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	prefix := "private/" + s.id + "/up/"
	u := uplink{channel: pk.TopicName[len(prefix):], payload: append([]byte{}, pk.Payload...)}
	h, err := envelope.Parse(pk.Payload)
	if err != nil {
		u.reason = envelope.ReasonOf(err)
		s.uplinks <- u
		return
	}
	epoch, ok := s.epochOf(h)
	if !ok {
		u.reason = envelope.ReasonUnknownKey
		s.uplinks <- u
		return
	}
	w := s.window(epoch)
	keys, err := s.keys(epoch, envelope.Uplink)
	if err == nil {
		err = w.Check(h.Seq)
	}
	var pt []byte
	if err == nil {
		pt, h, err = envelope.Open(keys, pk.TopicName, pk.Payload)
	}
	if err == nil {
		err = w.Commit(h.Seq)
	}
	if err != nil {
		u.reason = envelope.ReasonOf(err)
		s.uplinks <- u
		return
	}
	s.uplinks <- uplink{channel: u.channel, epoch: epoch, seq: h.Seq, payload: pt, sealed: true}
}

// sealDown seals a downlink for channel under epoch with the next sequence
// number of that epoch.
func (s *standIn) sealDown(channel string, epoch uint32, pt []byte) []byte {
	s.t.Helper()
	keys, err := s.keys(epoch, envelope.Downlink)
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	seq := s.downSeq[epoch]
	s.downSeq[epoch]++
	s.mu.Unlock()
	msg, err := envelope.Seal(keys, seq, "private/"+s.id+"/down/"+channel, pt)
	if err != nil {
		s.t.Fatal(err)
	}
	return msg
}

// rekeyMessage is Warden's rekey to epoch, sealed under sealEpoch.
func (s *standIn) rekeyMessage(sealEpoch, epoch uint32, secret []byte) []byte {
	pt := binary.BigEndian.AppendUint32(nil, epoch)
	return s.sealDown(RekeyChannel, sealEpoch, append(pt, secret...))
}

// publish sends msg on the device's downlink channel.
func (s *standIn) publish(channel string, msg []byte) {
	s.t.Helper()
	if err := s.b.srv.Publish("private/"+s.id+"/down/"+channel, msg, false, 1); err != nil {
		s.t.Fatal(err)
	}
}

func (s *standIn) nextUplink() uplink {
	s.t.Helper()
	select {
	case u := <-s.uplinks:
		return u
	case <-time.After(5 * time.Second):
		s.t.Fatal("the stand-in saw no uplink within 5s")
		return uplink{}
	}
}

func (s *standIn) nextConnect() connectResult {
	s.t.Helper()
	select {
	case c := <-s.connects:
		return c
	case <-time.After(5 * time.Second):
		s.t.Fatal("the stand-in saw no plain CONNECT within 5s")
		return connectResult{}
	}
}

// memCounterStore is an envelope.CounterStore in memory: what a device
// without non-volatile storage would have, and what a counter file
// restored from an old copy amounts to.
type memCounterStore struct {
	mu    sync.Mutex
	bound uint64
	fail  error
}

func (m *memCounterStore) Load() (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bound, nil
}

func (m *memCounterStore) Save(b uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.bound = b
	return nil
}

func memCounter(t testing.TB) *envelope.Counter {
	t.Helper()
	c, err := envelope.NewCounter(&memCounterStore{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// memWindowStore is a WindowStore in memory that survives a "restart"
// (a new Client given the same store).
type memWindowStore struct {
	mu   sync.Mutex
	w    map[uint32][]byte
	fail error
}

func (m *memWindowStore) Load(epoch uint32) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.w[epoch], nil
}

func (m *memWindowStore) Save(epoch uint32, b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	if m.w == nil {
		m.w = make(map[uint32][]byte)
	}
	m.w[epoch] = append([]byte{}, b...)
	return nil
}
