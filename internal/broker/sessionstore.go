package broker

import (
	"strconv"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
)

// sessionStore persists sessions, subscriptions, retained and inflight
// messages in a bbolt file (mochi's bolt hook), with two repairs:
//
//   - mochi v2.7.9's bolt hook does not store an inflight message's packet
//     ID, so after a restart every queued QoS 1 message fails to resend
//     ("missing packet id") and is lost. The ID is still in the record's key
//     (inflight_<client>:<packet id>); restore it from there.
//   - $SYS counters are not worth restoring, and the hook logs an error on
//     every first start when there are none.
//   - sessions that end with their connection are not stored at all
//     (ephemeral), and their end deletes a stored record only when there
//     is one (stored): mochi's hook deleted one, a write transaction, for
//     every such disconnection, 5% of the broker's CPU in a reconnect
//     storm (docs/performance.md).
type sessionStore struct {
	*bolt.Hook
	// stored holds the IDs of clients with a record in the store:
	// restored at start, or written since.
	stored sync.Map // client ID -> struct{}
}

// StoredClients restores the stored client records and remembers whose
// they are.
func (s *sessionStore) StoredClients() ([]storage.Client, error) {
	cs, err := s.Hook.StoredClients()
	for _, c := range cs {
		s.stored.Store(c.ID, struct{}{})
	}
	return cs, err
}

// OnWillSent rewrites the client record of a session that may be resumed
// (its will is gone); an ephemeral session has no record to rewrite.
func (s *sessionStore) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if !ephemeral(cl) {
		s.stored.Store(cl.ID, struct{}{})
		s.Hook.OnWillSent(cl, pk)
	}
}

// OnDisconnect deletes the record of a session that ends with its
// connection, if there is one: an earlier, resumable session of the same
// client ID, which this one replaced.
func (s *sessionStore) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if expire {
		if _, ok := s.stored.Load(cl.ID); !ok {
			return
		}
	}
	s.Hook.OnDisconnect(cl, err, expire)
	if expire && cl.StopCause() != packets.ErrSessionTakenOver {
		s.stored.Delete(cl.ID)
	}
}

// OnClientExpired deletes the record of a session that expired.
func (s *sessionStore) OnClientExpired(cl *mqtt.Client) {
	s.Hook.OnClientExpired(cl)
	s.stored.Delete(cl.ID)
}

func (s *sessionStore) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := s.Hook.StoredInflightMessages()
	for i := range msgs {
		if msgs[i].PacketID != 0 {
			continue
		}
		j := strings.LastIndexByte(msgs[i].ID, ':')
		if j < 0 {
			continue
		}
		if n, perr := strconv.ParseUint(msgs[i].ID[j+1:], 10, 16); perr == nil {
			msgs[i].PacketID = uint16(n)
		}
	}
	return msgs, err
}

func (s *sessionStore) StoredSysInfo() (storage.SystemInfo, error) {
	return storage.SystemInfo{}, nil
}

// ephemeral reports whether cl's session ends with its connection: MQTT 5
// with a session expiry of 0, or MQTT 3 with a clean session. Nothing of
// such a session is ever resumed (not after a disconnection, and not after
// a restart either: a restored session that expires at once is discarded),
// so writing it to the store is work for nothing; at QoS 1 it was four
// write transactions per relayed message (the device's and the reader's
// in-flight records, each stored and deleted).
func ephemeral(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}

// OnSessionEstablished stores the client record of a session that may be
// resumed.
func (s *sessionStore) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if !ephemeral(cl) {
		s.stored.Store(cl.ID, struct{}{})
		s.Hook.OnSessionEstablished(cl, pk)
	}
}

// OnSubscribed stores the subscriptions of a session that may be resumed.
func (s *sessionStore) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if !ephemeral(cl) {
		s.Hook.OnSubscribed(cl, pk, reasonCodes)
	}
}

// OnUnsubscribed removes stored subscriptions of a session that may be
// resumed.
func (s *sessionStore) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if !ephemeral(cl) {
		s.Hook.OnUnsubscribed(cl, pk)
	}
}

// OnQosPublish stores an in-flight message of a session that may be
// resumed.
func (s *sessionStore) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if !ephemeral(cl) {
		s.Hook.OnQosPublish(cl, pk, sent, resends)
	}
}

// OnQosComplete removes a stored in-flight message of a session that may
// be resumed.
func (s *sessionStore) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if !ephemeral(cl) {
		s.Hook.OnQosComplete(cl, pk)
	}
}

// OnQosDropped removes a stored in-flight message of a session that may
// be resumed.
func (s *sessionStore) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if !ephemeral(cl) {
		s.Hook.OnQosDropped(cl, pk)
	}
}
