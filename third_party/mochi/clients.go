// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/xid"

	"github.com/mochi-mqtt/server/v2/mempool"
	"github.com/mochi-mqtt/server/v2/packets"
)

const (
	defaultKeepalive             uint16 = 10 // the default connection keepalive value in seconds.
	defaultClientProtocolVersion byte   = 4  // the default mqtt protocol version of connecting clients (if somehow unspecified).
	minimumKeepalive             uint16 = 5  // the minimum recommended keepalive - values under with display a warning.
)

var (
	ErrMinimumKeepalive = errors.New("client keepalive is below minimum recommended value and may exhibit connection instability")
)

// ReadFn is the function signature for the function used for reading and processing new packets.
type ReadFn func(*Client, packets.Packet) error

// Clients contains a map of the clients known by the broker.
type Clients struct {
	internal map[string]*Client // clients known by the broker, keyed on client id.
	sync.RWMutex
}

// NewClients returns an instance of Clients.
func NewClients() *Clients {
	return &Clients{
		internal: make(map[string]*Client),
	}
}

// Add adds a new client to the clients map, keyed on client id.
func (cl *Clients) Add(val *Client) {
	cl.Lock()
	defer cl.Unlock()
	cl.internal[val.ID] = val
}

// GetAll returns all the clients.
func (cl *Clients) GetAll() map[string]*Client {
	cl.RLock()
	defer cl.RUnlock()
	m := map[string]*Client{}
	for k, v := range cl.internal {
		m[k] = v
	}
	return m
}

// Range calls f for each client, under the read lock (f must not add or
// delete clients). WARDEN PATCH (PATCHES.md, 13).
func (cl *Clients) Range(f func(*Client)) {
	cl.RLock()
	defer cl.RUnlock()
	for _, v := range cl.internal {
		f(v)
	}
}

// Collect returns the clients match reports true for, asked under the
// read lock (match must not add or delete clients): the once-a-second
// expiry sweeps look at every client this way instead of copying the
// whole map (GetAll) to find the few that expire. WARDEN PATCH
// (PATCHES.md, 29).
func (cl *Clients) Collect(match func(*Client) bool) []*Client {
	cl.RLock()
	defer cl.RUnlock()
	var out []*Client
	for _, v := range cl.internal {
		if match(v) {
			out = append(out, v)
		}
	}
	return out
}

// Get returns the value of a client if it exists.
func (cl *Clients) Get(id string) (*Client, bool) {
	cl.RLock()
	defer cl.RUnlock()
	val, ok := cl.internal[id]
	return val, ok
}

// Len returns the length of the clients map.
func (cl *Clients) Len() int {
	cl.RLock()
	defer cl.RUnlock()
	val := len(cl.internal)
	return val
}

// DeleteIf removes c from the map if it is still the client registered
// under its ID, and reports whether it was. WARDEN PATCH (PATCHES.md, 7):
// a connection cleaning up after itself must not remove the client that
// reconnected with the same ID in the meantime.
func (cl *Clients) DeleteIf(c *Client) bool {
	cl.Lock()
	defer cl.Unlock()
	if cl.internal[c.ID] != c {
		return false
	}
	delete(cl.internal, c.ID)
	return true
}

// Delete removes a client from the internal map.
func (cl *Clients) Delete(id string) {
	cl.Lock()
	defer cl.Unlock()
	delete(cl.internal, id)
}

// GetByListener returns clients matching a listener id.
func (cl *Clients) GetByListener(id string) []*Client {
	cl.RLock()
	defer cl.RUnlock()
	clients := make([]*Client, 0, len(cl.internal)) // WARDEN PATCH (PATCHES.md, 17): not cl.Len(), which takes the read lock again
	for _, client := range cl.internal {
		if client.Net.Listener == id && !client.Closed() {
			clients = append(clients, client)
		}
	}
	return clients
}

// Client contains information about a client known by the broker.
type Client struct {
	Properties   ClientProperties // client properties
	State        ClientState      // the operational state of the client.
	Net          ClientConnection // network connection state of the client
	ID           string           // the client id.
	ops          *ops             // ops provides a reference to server ops.
	sync.RWMutex                  // mutex
}

// ClientConnection contains the connection transport and metadata for the client.
type ClientConnection struct {
	Conn        net.Conn      // the net.Conn used to establish the connection
	bconn       *bufio.Reader // a buffered net.Conn for reading packets; WARDEN PATCH (PATCHES.md, 12): nil: Conn is read directly
	hasFirst    bool          // WARDEN PATCH (PATCHES.md, 12): first holds the first byte of the next packet
	first       [1]byte       // WARDEN PATCH (PATCHES.md, 12)
	deadline    time.Time     // WARDEN PATCH (PATCHES.md, 13): the keepalive deadline refreshDeadline last set
	deadlineSet bool          // WARDEN PATCH (PATCHES.md, 25): refreshDeadline has set it once

	// WARDEN PATCH (PATCHES.md, 13): the idle sweep's view of the reader.
	waitState  atomic.Int32  // waitBusy, waitDeep or waitKicked
	lastPacket atomic.Int64  // when the last packet started to arrive, in Unix nanoseconds
	kickMu     sync.Mutex    // held by kickIdle while it moves the read deadline
	outbuf     *bytes.Buffer // a buffer for writing packets

	// WARDEN PATCH (PATCHES.md, 22): acknowledgements the reader owes,
	// written with the next packet or before the next read of the socket.
	acks        *bytes.Buffer // encoded, not yet written; under the client's lock
	acksPending atomic.Bool   // acks holds something (read without the lock)
	deferAcks   bool          // the connection tells the client before it reads its socket
	Remote      string        // the remote address of the client
	Listener    string        // listener id of the client
	Inline      bool          // if true, the client is the built-in 'inline' embedded client
}

// ClientProperties contains the properties which define the client behaviour.
type ClientProperties struct {
	Props           packets.Properties
	Will            Will
	Username        []byte
	ProtocolVersion byte
	Clean           bool
}

// Will contains the last will and testament details for a client connection.
type Will struct {
	Payload           []byte                 // -
	User              []packets.UserProperty // -
	TopicName         string                 // -
	Flag              uint32                 // 0,1
	WillDelayInterval uint32                 // -
	Qos               byte                   // -
	Retain            bool                   // -
}

// ClientState tracks the state of the client.
type ClientState struct {
	TopicAliases    TopicAliases       // a map of topic aliases
	stopCause       atomic.Value       // reason for stopping
	Inflight        *Inflight          // a map of in-flight qos messages
	Subscriptions   *Subscriptions     // a map of the subscription filters a client maintains
	disconnected    int64              // the time the client disconnected in unix time, for calculating expiry
	outbound        outQueue           // WARDEN PATCH (PATCHES.md, 10): queue for pending outbound packets
	endOnce         sync.Once          // only end once
	isTakenOver     atomic.Bool        // used to identify orphaned clients
	packetID        uint32             // the current highest packetID
	open            context.Context    // indicate that the client is open for packet exchange
	cancelOpen      context.CancelFunc // cancel function for open context
	maxInflight     uint16             // WARDEN PATCH (PATCHES.md, 2): this client's in-flight limit; 0: the server's
	Keepalive       uint16             // the number of seconds the connection can wait
	ServerKeepalive bool               // keepalive was set by the server
}

// newClient returns a new instance of Client. This is almost exclusively used by Server
// for creating new clients, but it lives here because it's not dependent.
func newClient(c net.Conn, o *ops) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	cl := &Client{
		State: ClientState{
			Inflight:      NewInflights(),
			Subscriptions: NewSubscriptions(),
			TopicAliases:  NewTopicAliases(o.options.Capabilities.TopicAliasMaximum),
			open:          ctx,
			cancelOpen:    cancel,
			Keepalive:     defaultKeepalive,
			outbound:      outQueue{limit: int(o.options.Capabilities.MaximumClientWritesPending)},
		},
		Properties: ClientProperties{
			ProtocolVersion: defaultClientProtocolVersion, // default protocol version
		},
		ops: o,
	}

	if c != nil {
		cl.Net = ClientConnection{
			Conn:   c,
			Remote: c.RemoteAddr().String(),
		}
		// WARDEN PATCH (PATCHES.md, 12): a connection that buffers what it
		// reads itself (TLS decrypts a whole record into its own buffer)
		// is read directly, without a second buffer; a plain socket gets
		// one, since each read of it is a system call.
		if _, ok := c.(interface{ ConnectionState() tls.ConnectionState }); !ok {
			cl.Net.bconn = bufio.NewReaderSize(c, o.options.ClientNetReadBufferSize)
		}
	}

	return cl
}

// outQueue is a client's queue of packets waiting to be written.
//
// WARDEN PATCH (PATCHES.md, 10): upstream queues them in a buffered
// channel drained by a goroutine per client (WriteLoop) that lives as long
// as the connection. An idle client kept that goroutine parked, with the
// stack its last write grew (8 KiB: WritePacket takes an 800-byte packet
// by value, and the TLS record layer runs under it), and the channel's
// buffer. Here the writer goroutine runs only while the queue holds
// packets: the first packet queued starts it and it ends when the queue
// is empty, so an idle client holds neither. Packets are still written in
// the order queued, by one goroutine at a time.
type outQueue struct {
	mu      sync.Mutex
	pks     []*packets.Packet // pks[head:] are waiting
	head    int
	limit   int          // most packets waiting at once; more are refused
	pending atomic.Int32 // len(pks) - head, readable without mu
	writing bool         // a writer goroutine is running (drain)
}

// queueOutbound queues pk for the client's writer, starting it if it is
// not running; false if the queue is full.
func (cl *Client) queueOutbound(pk *packets.Packet) bool {
	q := &cl.State.outbound
	q.mu.Lock()
	if len(q.pks)-q.head >= q.limit {
		q.mu.Unlock()
		return false
	}
	q.pks = append(q.pks, pk)
	q.pending.Add(1)
	start := !q.writing
	q.writing = true
	q.mu.Unlock()
	if start {
		go cl.drainOutbound()
	}
	return true
}

// outboundPending is how many packets wait in the queue (the one being
// written, if any, excluded).
func (cl *Client) outboundPending() int32 {
	return cl.State.outbound.pending.Load()
}

// drainOutbound writes queued packets until the queue is empty or the
// client closes; packets still queued at close are dropped, as upstream's
// WriteLoop left them in its channel (QoS 1 and 2 ones stay in flight and
// are resent to a resumed session).
func (cl *Client) drainOutbound() {
	q := &cl.State.outbound
	for {
		q.mu.Lock()
		if q.head == len(q.pks) || cl.Closed() {
			q.pending.Store(0)
			if cap(q.pks) > 16 { // a burst's array goes back; a small one is kept
				q.pks = nil
			} else {
				clear(q.pks)
				q.pks = q.pks[:0]
			}
			q.head = 0
			q.writing = false
			q.mu.Unlock()
			return
		}
		pk := q.pks[q.head]
		q.pks[q.head] = nil
		q.head++
		q.pending.Add(-1)
		q.mu.Unlock()

		if err := cl.WritePacket(*pk); err != nil {
			cl.ops.log.Debug("failed publishing packet", "error", err, "client", cl.ID, "packet", pk)
		}
	}
}

// ParseConnect parses the connect parameters and properties for a client.
func (cl *Client) ParseConnect(lid string, pk packets.Packet) {
	cl.Net.Listener = lid

	cl.Properties.ProtocolVersion = pk.ProtocolVersion
	cl.Properties.Username = pk.Connect.Username
	cl.Properties.Clean = pk.Connect.Clean
	cl.Properties.Props = pk.Properties.Copy(false)

	if cl.Properties.Props.ReceiveMaximum > cl.ops.options.Capabilities.MaximumInflight { // 3.3.4 Non-normative
		cl.Properties.Props.ReceiveMaximum = cl.ops.options.Capabilities.MaximumInflight
	}

	if pk.Connect.Keepalive <= minimumKeepalive {
		cl.ops.log.Warn(
			ErrMinimumKeepalive.Error(),
			"client", cl.ID,
			"keepalive", pk.Connect.Keepalive,
			"recommended", minimumKeepalive,
		)
	}

	cl.State.Keepalive = pk.Connect.Keepalive                                              // [MQTT-3.2.2-22]
	cl.State.Inflight.ResetReceiveQuota(int32(cl.ops.options.Capabilities.ReceiveMaximum)) // server receive max per client
	cl.State.Inflight.ResetSendQuota(int32(cl.Properties.Props.ReceiveMaximum))            // client receive max
	cl.State.TopicAliases.Outbound = NewOutboundTopicAliases(cl.Properties.Props.TopicAliasMaximum)

	cl.ID = pk.Connect.ClientIdentifier
	if cl.ID == "" {
		cl.ID = xid.New().String() // [MQTT-3.1.3-6] [MQTT-3.1.3-7]
		cl.Properties.Props.AssignedClientID = cl.ID
	}

	if pk.Connect.WillFlag {
		cl.Properties.Will = Will{
			Qos:               pk.Connect.WillQos,
			Retain:            pk.Connect.WillRetain,
			Payload:           pk.Connect.WillPayload,
			TopicName:         pk.Connect.WillTopic,
			WillDelayInterval: pk.Connect.WillProperties.WillDelayInterval,
			User:              pk.Connect.WillProperties.User,
		}
		if pk.Properties.SessionExpiryIntervalFlag &&
			pk.Properties.SessionExpiryInterval < pk.Connect.WillProperties.WillDelayInterval {
			cl.Properties.Will.WillDelayInterval = pk.Properties.SessionExpiryInterval
		}
		if pk.Connect.WillFlag {
			cl.Properties.Will.Flag = 1 // atomic for checking
		}
	}
}

// refreshDeadline refreshes the read/write deadline for the net.Conn connection.
//
// WARDEN PATCH (PATCHES.md, 25): the deadline is one and a half times the
// keepalive in time (upstream computed it in whole seconds: a keepalive
// of 1 s gave 1 s, of 3 s gave 4 s), and it is moved only when it would
// move by an eighth of that window or more. Moving it costs a timer
// update in the runtime (3% of the broker's CPU under a QoS 0 load, for a
// deadline that moved by microseconds); a client that keeps its keepalive
// is still never cut, since the deadline stays at least 1.375 keepalives
// after its last packet.
func (cl *Client) refreshDeadline(keepalive uint16) {
	var expiry time.Time // nil time can be used to disable deadline if keepalive = 0
	var window time.Duration
	now := time.Now()
	cl.Net.lastPacket.Store(now.UnixNano()) // WARDEN PATCH (PATCHES.md, 13)
	if keepalive > 0 {
		window = time.Duration(keepalive) * time.Second * 3 / 2
		expiry = now.Add(window) // [MQTT-3.1.2-22]
	}

	if cl.Net.deadlineSet && expiry.IsZero() == cl.Net.deadline.IsZero() &&
		(expiry.IsZero() || expiry.Sub(cl.Net.deadline) < window/8) {
		return
	}
	cl.Net.deadlineSet = true
	cl.Net.deadline = expiry // WARDEN PATCH (PATCHES.md, 13)
	if cl.Net.Conn != nil {
		_ = cl.Net.Conn.SetDeadline(expiry) // [MQTT-3.1.2-22]
	}
}

// NextPacketID returns the next available (unused) packet id for the client.
// If no unused packet ids are available, an error is returned and the client
// should be disconnected.
func (cl *Client) NextPacketID() (i uint32, err error) {
	cl.Lock()
	defer cl.Unlock()

	i = atomic.LoadUint32(&cl.State.packetID)
	started := i
	overflowed := false
	for {
		if overflowed && i == started {
			return 0, packets.ErrQuotaExceeded
		}

		if i >= cl.ops.options.Capabilities.maximumPacketID {
			overflowed = true
			i = 0
			continue
		}

		i++

		if _, ok := cl.State.Inflight.Get(uint16(i)); !ok {
			atomic.StoreUint32(&cl.State.packetID, i)
			return i, nil
		}
	}
}

// ResendInflightMessages attempts to resend any pending inflight messages to connected clients.
func (cl *Client) ResendInflightMessages(force bool) error {
	if cl.State.Inflight.Len() == 0 {
		return nil
	}

	// WARDEN PATCH (PATCHES.md, 26): in the order first sent
	// [MQTT-4.6.0-1]; packets parked for want of send quota were never
	// sent and wait for it still (Server.releaseParked sends them after);
	// each publish sent again takes a unit of the quota it holds until
	// acknowledged. Upstream sent parked packets too, beyond the client's
	// Receive Maximum, and released them again later.
	for _, tk := range cl.State.Inflight.GetAll(false) {
		if tk.Expiry < 0 {
			continue
		}
		if tk.FixedHeader.Type == packets.Publish {
			tk.FixedHeader.Dup = true // [MQTT-3.3.1-1] [MQTT-3.3.1-3]
			cl.State.Inflight.TakeSendQuota()
		}

		cl.ops.hooks.OnQosPublish(cl, tk, tk.Created, 0)
		err := cl.WritePacket(tk)
		if err != nil {
			return err
		}

		if tk.FixedHeader.Type == packets.Puback || tk.FixedHeader.Type == packets.Pubcomp {
			if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
				cl.ops.hooks.OnQosComplete(cl, tk)
				atomic.AddInt64(&cl.ops.info.Inflight, -1)
			}
		}
	}

	return nil
}

// forgetInflights empties the in-flight store of a client whose session
// a new client of the same ID took over with a copy of it (Clone). WARDEN
// PATCH (PATCHES.md, 26): ClearInflights, used here upstream, reported
// each packet dropped (OnQosDropped), which made the session store
// delete what the new client now holds under the same keys: a restart
// before they were acknowledged lost them.
func (cl *Client) forgetInflights() {
	for _, tk := range cl.State.Inflight.GetAll(false) {
		cl.State.Inflight.Delete(tk.PacketID)
	}
}

// ClearInflights deletes all inflight messages for the client, e.g. for a disconnected user with a clean session.
func (cl *Client) ClearInflights() {
	for _, tk := range cl.State.Inflight.GetAll(false) {
		if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
			cl.ops.hooks.OnQosDropped(cl, tk)
			atomic.AddInt64(&cl.ops.info.Inflight, -1)
		}
	}
}

// ClearExpiredInflights deletes any inflight messages which have expired.
func (cl *Client) ClearExpiredInflights(now, maximumExpiry int64) []uint16 {
	deleted := []uint16{}
	// WARDEN PATCH (PATCHES.md, 27): a message's expiry drops it only
	// while it waits for send quota (parked, Expiry -1: its expiry is
	// Created plus its interval); once sent, its delivery has started and
	// it stays until acknowledged [MQTT-3.3.2-5]. Upstream expired sent
	// messages, whose PUBACK then found nothing and never returned the
	// send quota, and never expired parked ones.
	for _, tk := range cl.State.Inflight.GetAll(false) {
		parked := tk.Expiry < 0
		expired := false
		if parked && tk.Properties.MessageExpiryInterval > 0 {
			interval := int64(tk.Properties.MessageExpiryInterval)
			if maximumExpiry > 0 {
				interval = min(interval, maximumExpiry)
			}
			expired = tk.Created+interval < now // [MQTT-3.3.2-5]
		}

		// If the maximum message expiry interval is set (greater than 0), and the message
		// retention period exceeds the maximum expiry, the message will be forcibly removed.
		enforced := maximumExpiry > 0 && now-tk.Created > maximumExpiry

		if expired || enforced {
			if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
				cl.ops.hooks.OnQosDropped(cl, tk)
				atomic.AddInt64(&cl.ops.info.Inflight, -1)
				deleted = append(deleted, tk.PacketID)
				if !parked && tk.FixedHeader.Type == packets.Publish {
					// WARDEN PATCH (PATCHES.md, 27): its unit of send quota
					// comes back; no acknowledgement will return it.
					cl.State.Inflight.IncreaseSendQuota()
				}
			}
		}
	}

	return deleted
}

// Read reads incoming packets from the connected client and transforms them into
// packets to be handled by the packetHandler.
//
// WARDEN PATCH (PATCHES.md, 11): the loop waits for each packet's first
// byte (awaitPacket) in frames of a few hundred bytes and handles the
// packet in a call that has returned by the next wait (readNext, whose
// frame holds whole packets by value): upstream parked under 5 KiB of
// frames, which kept every reader's stack at 16 KiB. With patch 13 an
// idle client's goroutine waits on its socket with well under 1 KiB of
// stack in use, and the collector shrinks its stack to 4 KiB.
func (cl *Client) Read(packetHandler ReadFn) error {
	for {
		if cl.Closed() {
			return nil
		}

		cl.refreshDeadline(cl.State.Keepalive)
		if err := cl.awaitPacket(); err != nil {
			return err
		}
		if err := cl.readNext(packetHandler); err != nil {
			return err
		}
	}
}

// readNext reads and handles one packet. WARDEN PATCH (PATCHES.md, 11).
//
//go:noinline
func (cl *Client) readNext(packetHandler ReadFn) error {
	fh := new(packets.FixedHeader)
	if err := cl.ReadFixedHeader(fh); err != nil {
		return err
	}

	pk, err := cl.ReadPacket(fh)
	if err != nil {
		return err
	}

	return packetHandler(cl, pk) // Process inbound packet.
}

// awaitPacket returns when the next packet's first byte is there; on a
// connection read directly, it reads that byte into cl.Net.first.
// WARDEN PATCH (PATCHES.md, 11, 12).
func (cl *Client) awaitPacket() error {
	if cl.Net.Conn == nil {
		return ErrConnectionClosed
	}
	if cl.Net.hasFirst {
		return nil
	}
	if cl.Net.bconn != nil {
		_, err := cl.Net.bconn.Peek(1)
		return err
	}
	w, shallow := cl.Net.Conn.(IdleWaiter)
	for {
		// WARDEN PATCH (PATCHES.md, 13): a client that has sent nothing
		// for Options.IdleWaitAfter is kicked out of the connection's Read (under
		// TLS, 2 KiB of record-layer frames) by the server's idle sweep
		// (kickIdle) and waits for its socket to become readable in a
		// few hundred bytes of frames instead.
		if shallow {
			cl.Net.waitState.Store(waitDeep)
		}
		n, err := cl.Net.Conn.Read(cl.Net.first[:]) // not io.ReadFull: its frame would be on the parked stack too
		kicked := false
		if shallow && !cl.Net.waitState.CompareAndSwap(waitDeep, waitBusy) {
			// kickIdle moved the read deadline: wait until it is done
			// doing so before anything else sets it.
			kicked = true
			cl.Net.kickMu.Lock()
			cl.Net.waitState.Store(waitBusy)
			cl.Net.kickMu.Unlock()
			_ = cl.Net.Conn.SetReadDeadline(cl.Net.deadline)
		}
		if n == 1 {
			cl.Net.hasFirst = true
			return nil
		}
		if err == nil {
			continue
		}
		if !kicked || !errors.Is(err, os.ErrDeadlineExceeded) ||
			!cl.Net.deadline.IsZero() && !time.Now().Before(cl.Net.deadline) {
			return err // the keepalive deadline, or the connection's end
		}
		// Idle. A read timeout leaves a TLS connection usable (only a
		// complete record would have been returned; a partial one stays
		// buffered), so waiting on the socket misses nothing.
		if err := w.WaitReadable(); err != nil {
			if errors.Is(err, errors.ErrUnsupported) {
				shallow = false
				continue
			}
			return err
		}
	}
}

// States of a client's wait for a packet (ClientConnection.waitState).
// WARDEN PATCH (PATCHES.md, 13).
const (
	waitBusy   int32 = iota // reading or handling a packet, or waiting on the socket
	waitDeep                // waiting for a packet in the connection's Read
	waitKicked              // kickIdle moved the read deadline to end that wait
)

// kickIdle ends the wait in the connection's Read of a client with an
// IdleWaiter connection that has sent nothing since before idleSince, so
// that it waits on its socket instead. WARDEN PATCH (PATCHES.md, 13).
func (cl *Client) kickIdle(idleSince int64) {
	if cl.Net.waitState.Load() != waitDeep || cl.Net.lastPacket.Load() > idleSince {
		return
	}
	cl.Net.kickMu.Lock()
	defer cl.Net.kickMu.Unlock()
	if cl.Net.waitState.CompareAndSwap(waitDeep, waitKicked) {
		_ = cl.Net.Conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// IdleWaiter is implemented by a connection that can wait until its
// socket has bytes to read without reading them, within the read
// deadline (errors.ErrUnsupported if it cannot after all). WARDEN PATCH
// (PATCHES.md, 13).
type IdleWaiter interface {
	WaitReadable() error
}

// DefaultIdleWaitAfter is Options.IdleWaitAfter's default. WARDEN PATCH
// (PATCHES.md, 13).
const DefaultIdleWaitAfter = 2 * time.Second

// ReadByte reads the next byte of the connection (the one awaitPacket
// read, if it did). WARDEN PATCH (PATCHES.md, 12).
func (c *ClientConnection) ReadByte() (byte, error) {
	if c.hasFirst {
		c.hasFirst = false
		return c.first[0], nil
	}
	if c.bconn != nil {
		return c.bconn.ReadByte()
	}
	if _, err := io.ReadFull(c.Conn, c.first[:]); err != nil {
		return 0, err
	}
	return c.first[0], nil
}

// Read reads from the connection, through its buffer if it has one.
// WARDEN PATCH (PATCHES.md, 12).
func (c *ClientConnection) Read(p []byte) (int, error) {
	if len(p) > 0 && c.hasFirst {
		c.hasFirst = false
		p[0] = c.first[0]
		return 1, nil
	}
	if c.bconn != nil {
		return c.bconn.Read(p)
	}
	return c.Conn.Read(p)
}

// Stop instructs the client to shut down all processing goroutines and disconnect.
func (cl *Client) Stop(err error) {
	cl.State.endOnce.Do(func() {

		if cl.Net.Conn != nil {
			_ = cl.Net.Conn.Close() // omit close error
		}

		if err != nil {
			cl.State.stopCause.Store(err)
		}

		if cl.State.cancelOpen != nil {
			cl.State.cancelOpen()
		}

		atomic.StoreInt64(&cl.State.disconnected, time.Now().Unix())
	})
}

// StopCause returns the reason the client connection was stopped, if any.
func (cl *Client) StopCause() error {
	if cl.State.stopCause.Load() == nil {
		return nil
	}
	return cl.State.stopCause.Load().(error)
}

// StopTime returns the the time the client disconnected in unix time, else zero.
func (cl *Client) StopTime() int64 {
	return atomic.LoadInt64(&cl.State.disconnected)
}

// Closed returns true if client connection is closed.
func (cl *Client) Closed() bool {
	return cl.State.open == nil || cl.State.open.Err() != nil
}

func (cl *Client) IsTakenOver() bool {
	return cl.State.isTakenOver.Load()
}

// ReadFixedHeader reads in the values of the next packet's fixed header.
func (cl *Client) ReadFixedHeader(fh *packets.FixedHeader) error {
	if cl.Net.Conn == nil {
		return ErrConnectionClosed
	}

	b, err := cl.Net.ReadByte() // WARDEN PATCH (PATCHES.md, 12)
	if err != nil {
		return err
	}

	err = fh.Decode(b)
	if err != nil {
		return err
	}

	var bu int
	fh.Remaining, bu, err = packets.DecodeLength(&cl.Net) // WARDEN PATCH (PATCHES.md, 12)
	if err != nil {
		return err
	}

	if cl.ops.options.Capabilities.MaximumPacketSize > 0 && uint32(fh.Remaining+1) > cl.ops.options.Capabilities.MaximumPacketSize {
		return packets.ErrPacketTooLarge // [MQTT-3.2.2-15]
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(bu+1))
	return nil
}

// ReadPacket reads the remaining buffer into an MQTT packet.
func (cl *Client) ReadPacket(fh *packets.FixedHeader) (pk packets.Packet, err error) {
	atomic.AddInt64(&cl.ops.info.PacketsReceived, 1)

	pk.ProtocolVersion = cl.Properties.ProtocolVersion // inherit client protocol version for decoding
	pk.FixedHeader = *fh
	p := make([]byte, pk.FixedHeader.Remaining)
	n, err := io.ReadFull(&cl.Net, p) // WARDEN PATCH (PATCHES.md, 12)
	if err != nil {
		return pk, err
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(n))

	// WARDEN PATCH (PATCHES.md, 12): p is the packet's own (it was made
	// above), so the decoder's slices into it stay valid; upstream copied
	// it again here.
	px := p
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(px)
	case packets.Disconnect:
		err = pk.DisconnectDecode(px)
	case packets.Connack:
		err = pk.ConnackDecode(px)
	case packets.Publish:
		err = pk.PublishDecode(px)
		if err == nil {
			atomic.AddInt64(&cl.ops.info.MessagesReceived, 1)
		}
	case packets.Puback:
		err = pk.PubackDecode(px)
	case packets.Pubrec:
		err = pk.PubrecDecode(px)
	case packets.Pubrel:
		err = pk.PubrelDecode(px)
	case packets.Pubcomp:
		err = pk.PubcompDecode(px)
	case packets.Subscribe:
		err = pk.SubscribeDecode(px)
	case packets.Suback:
		err = pk.SubackDecode(px)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(px)
	case packets.Unsuback:
		err = pk.UnsubackDecode(px)
	case packets.Pingreq:
	case packets.Pingresp:
	case packets.Auth:
		err = pk.AuthDecode(px)
	default:
		err = fmt.Errorf("invalid packet type; %v", pk.FixedHeader.Type)
	}

	if err != nil {
		return pk, err
	}

	pk, err = cl.ops.hooks.OnPacketRead(cl, pk)
	return
}

// BeforeReader is a connection that calls a function before each read
// from its socket (for a TLS connection: of the socket under TLS, which
// it reads only once every record it holds has been read). WARDEN PATCH
// (PATCHES.md, 22).
type BeforeReader interface {
	SetBeforeRead(fn func())
}

// deferAcksOnRead lets the client's acknowledgements wait for the next
// packet written or the next read of the socket, whichever comes first,
// if its connection tells it before it reads its socket; otherwise each
// is written at once. WARDEN PATCH (PATCHES.md, 22).
func (cl *Client) deferAcksOnRead() {
	if br, ok := cl.Net.Conn.(BeforeReader); ok && !cl.Net.Inline {
		br.SetBeforeRead(cl.flushAcks)
		cl.Net.deferAcks = true
	}
}

// writeAck writes an acknowledgement the reader owes for a packet it
// received. On a connection deferAcksOnRead set up, it is added to the
// acknowledgements written with the next packet or before the next read
// of the socket: the acknowledgements of packets that arrived together
// leave in one write. WARDEN PATCH (PATCHES.md, 22).
func (cl *Client) writeAck(pk packets.Packet) error {
	return cl.writePacket(pk, cl.Net.deferAcks)
}

// flushAcks writes the acknowledgements writeAck deferred. WARDEN PATCH
// (PATCHES.md, 22): called by the connection before it reads its socket.
func (cl *Client) flushAcks() {
	if !cl.Net.acksPending.Load() {
		return
	}
	cl.Lock()
	defer cl.Unlock()
	if cl.Net.acks == nil {
		return
	}
	_, err := cl.Net.acks.WriteTo(cl.Net.Conn)
	writeBufPool.Put(cl.Net.acks)
	cl.Net.acks = nil
	cl.Net.acksPending.Store(false)
	if err != nil {
		cl.ops.log.Debug("failed writing acknowledgements", "error", err, "client", cl.ID)
	}
}

// WritePacket encodes and writes a packet to the client.
func (cl *Client) WritePacket(pk packets.Packet) error {
	return cl.writePacket(pk, false)
}

// writePacket is WritePacket; deferred adds the encoded packet to the
// acknowledgements writeAck defers instead of writing it. WARDEN PATCH
// (PATCHES.md, 22).
func (cl *Client) writePacket(pk packets.Packet, deferred bool) error {
	if cl.Closed() {
		return ErrConnectionClosed
	}

	if cl.Net.Conn == nil {
		return nil
	}

	if pk.Expiry > 0 {
		expiry := pk.Expiry - time.Now().Unix()
		if expiry < 1 {
			expiry = 1
		}
		pk.Properties.MessageExpiryInterval = uint32(expiry) // [MQTT-3.3.2-6]
	}

	pk.ProtocolVersion = cl.Properties.ProtocolVersion
	if pk.Mods.MaxSize == 0 { // NB we use this statement to embed client packet sizes in tests
		pk.Mods.MaxSize = cl.Properties.Props.MaximumPacketSize
	}

	if cl.Properties.Props.RequestProblemInfoFlag && cl.Properties.Props.RequestProblemInfo == 0x0 {
		pk.Mods.DisallowProblemInfo = true // [MQTT-3.1.2-29] strict, no problem info on any packet if set
	}

	if pk.FixedHeader.Type != packets.Connack || cl.Properties.Props.RequestResponseInfo == 0x1 || cl.ops.options.Capabilities.Compatibilities.AlwaysReturnResponseInfo {
		pk.Mods.AllowResponseInfo = true // [MQTT-3.1.2-28] we need to know which properties we can encode
	}

	pk = cl.ops.hooks.OnPacketEncode(cl, pk)

	var err error
	// WARDEN PATCH (PATCHES.md, 5): the encoding buffer comes from a pool
	// and goes back when the packet is written, instead of a new buffer
	// grown afresh for every packet.
	buf := writeBufPool.Get()
	defer writeBufPool.Put(buf)
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(buf)
	case packets.Connack:
		err = pk.ConnackEncode(buf)
	case packets.Publish:
		err = pk.PublishEncode(buf)
	case packets.Puback:
		err = pk.PubackEncode(buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(buf)
	case packets.Suback:
		err = pk.SubackEncode(buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(buf)
	case packets.Unsuback:
		err = pk.UnsubackEncode(buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(buf)
	case packets.Pingresp:
		err = pk.PingrespEncode(buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(buf)
	case packets.Auth:
		err = pk.AuthEncode(buf)
	default:
		err = fmt.Errorf("%w: %v", packets.ErrNoValidPacketAvailable, pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}

	if pk.Mods.MaxSize > 0 && uint32(buf.Len()) > pk.Mods.MaxSize {
		return packets.ErrPacketTooLarge // [MQTT-3.1.2-24] [MQTT-3.1.2-25]
	}

	n, err := func() (int64, error) {
		cl.Lock()
		defer cl.Unlock()
		// WARDEN PATCH (PATCHES.md, 22): deferred acknowledgements wait in
		// acks; owed ones go out first, in the same write as this packet.
		if deferred {
			if cl.Net.acks == nil {
				cl.Net.acks = writeBufPool.Get()
				cl.Net.acksPending.Store(true)
			}
			n, _ := cl.Net.acks.Write(buf.Bytes())
			return int64(n), nil
		}
		if cl.Net.acks != nil {
			if cl.Net.outbuf == nil {
				cl.Net.outbuf = cl.Net.acks
			} else {
				_, _ = cl.Net.outbuf.Write(cl.Net.acks.Bytes())
				writeBufPool.Put(cl.Net.acks)
			}
			cl.Net.acks = nil
			cl.Net.acksPending.Store(false)
		}
		if cl.outboundPending() == 0 {
			if cl.Net.outbuf == nil {
				return buf.WriteTo(cl.Net.Conn)
			}

			// first write to buffer, then flush buffer
			n, _ := cl.Net.outbuf.Write(buf.Bytes()) // will always be successful
			err = cl.flushOutbuf()
			return int64(n), err
		}

		// there are more writes in the queue
		if cl.Net.outbuf == nil {
			if buf.Len() >= cl.ops.options.ClientNetWriteBufferSize {
				return buf.WriteTo(cl.Net.Conn)
			}
			cl.Net.outbuf = writeBufPool.Get() // WARDEN PATCH (PATCHES.md, 5)
		}

		n, _ := cl.Net.outbuf.Write(buf.Bytes()) // will always be successful
		if cl.Net.outbuf.Len() < cl.ops.options.ClientNetWriteBufferSize {
			return int64(n), nil
		}

		err = cl.flushOutbuf()
		return int64(n), err
	}()
	if err != nil {
		return err
	}

	atomic.AddInt64(&cl.ops.info.BytesSent, n)
	atomic.AddInt64(&cl.ops.info.PacketsSent, 1)
	if pk.FixedHeader.Type == packets.Publish {
		atomic.AddInt64(&cl.ops.info.MessagesSent, 1)
	}

	cl.ops.hooks.OnPacketSent(cl, pk, buf.Bytes())

	return err
}

// writeBufPool holds the buffers packets are encoded into and coalesced
// in before they are written. WARDEN PATCH (PATCHES.md, 5). Buffers grown
// beyond 64 KiB (a large packet) are left to the garbage collector rather
// than kept.
var writeBufPool = mempool.NewBuffer(64 << 10)

func (cl *Client) flushOutbuf() (err error) {
	if cl.Net.outbuf == nil {
		return
	}

	_, err = cl.Net.outbuf.WriteTo(cl.Net.Conn)
	if err == nil {
		// WARDEN PATCH (PATCHES.md, 5): back to the pool, so that an idle
		// client holds no coalescing buffer and a busy one reuses one.
		writeBufPool.Put(cl.Net.outbuf)
		cl.Net.outbuf = nil
	}
	return
}
