// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Inflight is a map of InflightMessage keyed on packet id.
type Inflight struct {
	sync.RWMutex
	internal            map[uint16]*packets.Packet // internal contains the inflight packets; WARDEN PATCH (PATCHES.md, 21): by pointer, never changed once stored
	receiveQuota        int32                      // remaining inbound qos quota for flow control
	sendQuota           int32                      // remaining outbound qos quota for flow control
	maximumReceiveQuota int32                      // maximum allowed receive quota
	maximumSendQuota    int32                      // maximum allowed send quota
	immediate           int                        // WARDEN PATCH (PATCHES.md, 3): packets with Expiry < 0
	waiting             []uint16                   // WARDEN PATCH (PATCHES.md, 16): IDs of packets with Expiry < 0, in the order parked (stale entries skipped)
	order               map[uint16]uint64          // WARDEN PATCH (PATCHES.md, 26): each packet's place in the order stored (nil until the first)
	stored              uint64                     // WARDEN PATCH (PATCHES.md, 26): packets stored so far
}

// place records that packet id is newly stored, after every packet
// stored before it; a packet replaced under its ID (a PUBREL in place of
// its PUBLISH, a parked packet sent) keeps its place. WARDEN PATCH
// (PATCHES.md, 26). Called with the lock held.
func (i *Inflight) place(id uint16) {
	if i.order == nil {
		i.order = map[uint16]uint64{}
	}
	i.stored++
	i.order[id] = i.stored
}

// NewInflights returns a new instance of an Inflight packets map.
func NewInflights() *Inflight {
	return &Inflight{
		internal: map[uint16]*packets.Packet{},
	}
}

// Set adds or updates an inflight packet by packet id.
func (i *Inflight) Set(m packets.Packet) bool {
	i.Lock()
	defer i.Unlock()

	old, ok := i.internal[m.PacketID]
	if ok && old.Expiry < 0 {
		i.immediate--
	}
	if m.Expiry < 0 {
		i.immediate++
		if !ok || old.Expiry >= 0 {
			i.waiting = append(i.waiting, m.PacketID) // WARDEN PATCH (PATCHES.md, 16)
		}
	}
	if !ok {
		i.place(m.PacketID) // WARDEN PATCH (PATCHES.md, 26)
	}
	i.internal[m.PacketID] = &m
	return !ok
}

// Get returns an inflight packet by packet id.
func (i *Inflight) Get(id uint16) (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()

	if m, ok := i.internal[id]; ok {
		return *m, true
	}

	return packets.Packet{}, false
}

// Len returns the size of the inflight messages map.
func (i *Inflight) Len() int {
	i.RLock()
	defer i.RUnlock()
	return len(i.internal)
}

// Clone returns a new instance of Inflight with the same message data.
// This is used when transferring inflights from a taken-over session.
func (i *Inflight) Clone() *Inflight {
	c := NewInflights()
	i.RLock()
	defer i.RUnlock()
	for k, v := range i.internal {
		c.internal[k] = v
	}
	c.immediate = i.immediate                       // WARDEN PATCH (PATCHES.md, 3)
	c.waiting = append([]uint16(nil), i.waiting...) // WARDEN PATCH (PATCHES.md, 16)
	if i.order != nil {                             // WARDEN PATCH (PATCHES.md, 26)
		c.order = make(map[uint16]uint64, len(i.order))
		for k, v := range i.order {
			c.order[k] = v
		}
	}
	c.stored = i.stored
	return c
}

// GetAll returns all the inflight messages.
func (i *Inflight) GetAll(immediate bool) []packets.Packet {
	i.RLock()
	defer i.RUnlock()
	return i.getAll(immediate)
}

// getAll is GetAll for a caller that holds the lock. WARDEN PATCH (see
// PATCHES.md, 1): NextImmediate took the read lock twice.
func (i *Inflight) getAll(immediate bool) []packets.Packet {
	m := []packets.Packet{}
	for _, v := range i.internal {
		if !immediate || (immediate && v.Expiry < 0) {
			m = append(m, *v)
		}
	}

	// WARDEN PATCH (PATCHES.md, 26): in the order stored. Upstream sorted
	// by the low 16 bits of the creation second: packets of the same
	// second came in map order, and the order turned over every 18 hours.
	sort.Slice(m, func(a, b int) bool {
		return i.order[m[a].PacketID] < i.order[m[b].PacketID]
	})

	return m
}

// NextImmediate returns the next inflight packet which is indicated to be sent immediately.
// This typically occurs when the quota has been exhausted, and we need to wait until new quota
// is free to continue sending.
func (i *Inflight) NextImmediate() (packets.Packet, bool) {
	// WARDEN PATCH (PATCHES.md, 3): this runs after every packet a client
	// sends while it has messages in flight; without a packet waiting to
	// be sent immediately there is nothing to look for.
	i.RLock()
	none := i.immediate == 0
	i.RUnlock()
	if none {
		return packets.Packet{}, false
	}

	// WARDEN PATCH (PATCHES.md, 16): the packet parked first, from the
	// queue of parked IDs. Upstream sorted the parked packets by the low
	// 16 bits of their creation time in seconds: those parked within the
	// same second came out in map order, not the order they were
	// published in [MQTT-4.6.0-6].
	i.Lock()
	defer i.Unlock()
	for len(i.waiting) > 0 {
		m, ok := i.internal[i.waiting[0]]
		if ok && m.Expiry < 0 {
			return *m, true // stays queued until sent (Set with Expiry >= 0 makes it stale)
		}
		i.waiting = i.waiting[1:]
	}
	i.waiting = nil
	return packets.Packet{}, false
}

// SetOutbound stores a new outbound QoS 1 or 2 packet and takes a unit of
// send quota for it, or, under flow control (a send quota was set), parks
// it (Expiry -1) when there is no quota left or earlier packets are
// parked, which must go first. It reports whether the packet ID was new
// and whether the packet was parked. WARDEN PATCH (PATCHES.md, 19): the
// decision and the quota taken are one step under the lock. Upstream read
// the quota, stored the packet, decremented the quota and parked it in
// four: a PUBACK returning the last unit of quota between the read and
// the parking found nothing to release and left the packet parked until
// the client's next packet, and two publishers sharing the last unit
// both sent. WARDEN PATCH (PATCHES.md, 21): m itself is stored, and may
// be queued for writing as well (one allocation for both); the caller
// must not change it once it is stored.
func (i *Inflight) SetOutbound(m *packets.Packet, flowControl bool) (isNew, parked bool) {
	return i.setOutbound(m, flowControl, false)
}

// ParkOutbound stores a new outbound QoS 1 or 2 packet parked, whatever
// the quota: for a session whose client is offline, the packet waits
// unsent (and its expiry runs) until the client resumes the session.
// WARDEN PATCH (PATCHES.md, 27). It reports whether the packet ID was new.
func (i *Inflight) ParkOutbound(m *packets.Packet) (isNew bool) {
	isNew, _ = i.setOutbound(m, true, true)
	return isNew
}

func (i *Inflight) setOutbound(m *packets.Packet, flowControl, park bool) (isNew, parked bool) {
	i.Lock()
	defer i.Unlock()

	old, ok := i.internal[m.PacketID]
	if ok && old.Expiry < 0 {
		i.immediate--
	}
	if park || flowControl && (i.immediate > 0 || atomic.LoadInt32(&i.sendQuota) <= 0) {
		m.Expiry = -1
		i.immediate++
		if !ok || old.Expiry >= 0 {
			i.waiting = append(i.waiting, m.PacketID)
		}
		parked = true
	} else if flowControl && !ok {
		atomic.AddInt32(&i.sendQuota, -1) // only decremented under the lock, after a check: never below 0
	}
	if !ok {
		i.place(m.PacketID) // WARDEN PATCH (PATCHES.md, 26)
	}
	i.internal[m.PacketID] = m
	return !ok, parked
}

// TakeSendQuota takes a unit of send quota if there is one, for a packet
// sent again (a resumed session's unacknowledged publishes). WARDEN PATCH
// (PATCHES.md, 26).
func (i *Inflight) TakeSendQuota() {
	i.Lock()
	defer i.Unlock()
	if atomic.LoadInt32(&i.sendQuota) > 0 {
		atomic.AddInt32(&i.sendQuota, -1)
	}
}

// ReleaseParked hands parked packets to send, in the order they were
// parked, while there is send quota, taking a unit for each and storing
// it as sent with the expiry set by send. It stops at the first packet
// send refuses (a full outbound queue: the packet stays parked for the
// next release). send runs under the lock, so packets released
// concurrently and packets sent by SetOutbound's callers keep their
// order. WARDEN PATCH (PATCHES.md, 19).
func (i *Inflight) ReleaseParked(send func(*packets.Packet) bool) {
	i.RLock()
	none := i.immediate == 0
	i.RUnlock()
	if none {
		return
	}

	i.Lock()
	defer i.Unlock()
	// Without flow control (no send quota set) packets are parked only
	// while their client is offline (ParkOutbound), and all go out.
	flowControl := atomic.LoadInt32(&i.maximumSendQuota) > 0
	for len(i.waiting) > 0 {
		id := i.waiting[0]
		m, ok := i.internal[id]
		if !ok || m.Expiry >= 0 {
			i.waiting = i.waiting[1:] // stale: acknowledged, dropped or resent meanwhile
			continue
		}
		if flowControl && atomic.LoadInt32(&i.sendQuota) <= 0 {
			return
		}
		out := *m // a copy: the parked packet is not changed (PATCHES.md, 21)
		if !send(&out) {
			return
		}
		i.waiting = i.waiting[1:]
		i.immediate--
		i.internal[id] = &out
		if flowControl {
			atomic.AddInt32(&i.sendQuota, -1)
		}
	}
	i.waiting = nil
}

// Delete removes an in-flight message from the map. Returns true if the message existed.
func (i *Inflight) Delete(id uint16) bool {
	i.Lock()
	defer i.Unlock()

	old, ok := i.internal[id]
	if ok && old.Expiry < 0 {
		i.immediate--
	}
	delete(i.internal, id)
	delete(i.order, id) // WARDEN PATCH (PATCHES.md, 26)
	if len(i.order) == 0 {
		i.order = nil // an idle session holds no map
	}

	return ok
}

// TakeRecieveQuota reduces the receive quota by 1.
func (i *Inflight) DecreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) > 0 {
		atomic.AddInt32(&i.receiveQuota, -1)
	}
}

// TakeRecieveQuota increases the receive quota by 1.
func (i *Inflight) IncreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) < atomic.LoadInt32(&i.maximumReceiveQuota) {
		atomic.AddInt32(&i.receiveQuota, 1)
	}
}

// ResetReceiveQuota resets the receive quota to the maximum allowed value.
func (i *Inflight) ResetReceiveQuota(n int32) {
	atomic.StoreInt32(&i.receiveQuota, n)
	atomic.StoreInt32(&i.maximumReceiveQuota, n)
}

// DecreaseSendQuota reduces the send quota by 1.
func (i *Inflight) DecreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) > 0 {
		atomic.AddInt32(&i.sendQuota, -1)
	}
}

// IncreaseSendQuota increases the send quota by 1.
func (i *Inflight) IncreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) < atomic.LoadInt32(&i.maximumSendQuota) {
		atomic.AddInt32(&i.sendQuota, 1)
	}
}

// ResetSendQuota resets the send quota to the maximum allowed value.
func (i *Inflight) ResetSendQuota(n int32) {
	atomic.StoreInt32(&i.sendQuota, n)
	atomic.StoreInt32(&i.maximumSendQuota, n)
}
