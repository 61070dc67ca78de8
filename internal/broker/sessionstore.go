package broker

import (
	"strconv"
	"strings"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
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
type sessionStore struct {
	*bolt.Hook
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
