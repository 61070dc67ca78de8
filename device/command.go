package device

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/warden-iot/warden/commandproto"
)

// Command is a command relayed by Warden (docs/commands.md).
type Command = commandproto.Command

// CommandHandler runs one command. Its context ends at the command's
// Deadline, or when the client is closed. It returns the answer's body (a
// JSON value of at most commandproto.MaxBody bytes, or nil for none) or an
// error, which Warden passes on to the app as the result's error text: do
// not put secrets in it. An error wrapping ErrUnknownCommand rejects the
// command instead.
type CommandHandler func(ctx context.Context, cmd Command) (json.RawMessage, error)

// ErrUnknownCommand, returned (or wrapped) by a CommandHandler, answers the
// command with status "rejected" and error "unknown command": the device
// did not act on it.
var ErrUnknownCommand = errors.New(commandproto.RejectUnknown)

// CommandQueue is how many commands may wait while a handler runs; a
// command arriving when that many wait is rejected as "busy".
const CommandQueue = 8

// commandMemory is how many command IDs, with their results, the client
// remembers to answer a repeated command without running it again. QoS 1
// redelivers within a connection or a resumed session, so the last few
// suffice.
const commandMemory = 64

// publishGrace bounds publishing a result beyond the command's deadline:
// a device clock a little behind Warden's still gets its answer in, and a
// rejection after the deadline still reaches Warden (which counts it).
const publishGrace = 10 * time.Second

// CommandStats counts what HandleCommands did.
type CommandStats struct {
	Received uint64 // commands that parsed, repeats included
	Repeated uint64 // commands whose ID had been seen already: answered from memory, or left to the pending answer
	Rejected uint64 // commands answered "rejected": past their deadline, busy or unknown
	Answered uint64 // results the broker acknowledged
	Dropped  uint64 // malformed commands, and results that could not be sent
}

// commander is the state of HandleCommands (see Client.cmd).
type commander struct {
	c     *Client
	h     CommandHandler
	log   *slog.Logger
	topic string // private/<id>/down/cmd

	queue chan Command             // to the handler goroutine
	out   chan commandproto.Result // to the publishing goroutine

	mu      sync.Mutex
	results map[string]*remembered // by command ID
	order   []string               // IDs in results, oldest first
	stats   CommandStats
}

// remembered is a command the client has seen: result is nil while it
// waits or runs.
type remembered struct {
	result   *commandproto.Result
	deadline time.Time
}

// HandleCommands subscribes to the device's command channel
// (private/<id>/down/cmd, QoS 1) and answers each command on
// private/<id>/up/cmd-result at QoS 1, as docs/commands.md describes. For
// an envelope device commands arrive sealed and are opened like every
// SubscribeDown message, and results are sealed like every PublishUp.
//
// h runs one command at a time, on a goroutine of its own, so that a slow
// command holds up nothing else; up to CommandQueue commands wait their
// turn, and any more are rejected as "busy". A command that arrives, or
// reaches the front of the queue, past its deadline is rejected as
// "deadline passed" without calling h. A malformed command is dropped
// unanswered and counted. The last 64 command IDs are remembered with their
// results: a repeated command (QoS 1 may deliver one twice) is answered
// with the same result without calling h again, or, while the first is
// still waiting or running, by the first's result.
//
// A client handles commands at most once: HandleCommands fails if it was
// already called successfully, or if the application already subscribes to
// the cmd channel itself, and afterwards SubscribeDown and Subscribe refuse
// that channel. ctx bounds the subscription only; handling stops at Close,
// which cancels a running handler's context and waits for it to return.
func (c *Client) HandleCommands(ctx context.Context, h CommandHandler) error {
	if h == nil {
		return errors.New("device: handle commands: the handler is nil")
	}
	if c.life.Err() != nil {
		return fmt.Errorf("device: handle commands: %w", ErrClosed)
	}
	cm := &commander{
		c:       c,
		h:       h,
		log:     c.s.log.With(slog.String("component", "commands")),
		topic:   c.downPrefix + commandproto.ChannelCommand,
		queue:   make(chan Command, CommandQueue),
		out:     make(chan commandproto.Result, commandMemory),
		results: make(map[string]*remembered, commandMemory),
	}
	if !c.cmd.CompareAndSwap(nil, cm) {
		return errors.New("device: handle commands: this client already handles commands")
	}
	c.mu.Lock()
	_, taken := c.subs[cm.topic]
	c.mu.Unlock()
	if taken {
		c.cmd.Store(nil)
		return fmt.Errorf("device: handle commands: the application already subscribes to %q; HandleCommands needs that channel to itself", cm.topic)
	}
	if err := c.subscribe(ctx, cm.topic, 1, cm.receive, true); err != nil {
		c.cmd.Store(nil)
		return err // names the topic already, and may be a *RefusedError
	}
	if c.life.Err() != nil { // closed while subscribing: Close may be waiting on wg
		return fmt.Errorf("device: handle commands: %w", ErrClosed)
	}
	c.wg.Add(2)
	go cm.run()
	go cm.publish()
	return nil
}

// CommandStats returns what HandleCommands has done so far; the zero value
// before it is called.
func (c *Client) CommandStats() CommandStats {
	cm := c.cmd.Load()
	if cm == nil {
		return CommandStats{}
	}
	cm.mu.Lock()
	defer cm.mu.Unlock()
	return cm.stats
}

// commandsReserved refuses the application a filter that HandleCommands
// holds, since subscribing to it again would replace the SDK's handler.
func (c *Client) commandsReserved(filter string) error {
	if cm := c.cmd.Load(); cm != nil && filter == cm.topic {
		return fmt.Errorf("device: subscribe to %q: the channel is reserved for the commands HandleCommands answers", filter)
	}
	return nil
}

// receive takes a command on the client's receive goroutine: it decides at
// once what it can (malformed, repeated, late, busy) and hands the rest to
// run, never blocking.
func (cm *commander) receive(m Message) {
	if cm.c.life.Err() != nil {
		return
	}
	cmd, err := commandproto.ParseCommand(m.Payload)
	if err != nil {
		cm.mu.Lock()
		cm.stats.Dropped++
		cm.mu.Unlock()
		cm.log.Warn("malformed command; dropped", "reason", err)
		return
	}
	log := cm.log.With(slog.String("command", cmd.ID), slog.String("name", cmd.Name))

	cm.mu.Lock()
	cm.stats.Received++
	if seen, ok := cm.results[cmd.ID]; ok {
		cm.stats.Repeated++
		cm.mu.Unlock()
		if seen.result == nil {
			log.Debug("repeated command still waiting or running; its result will answer both")
			return
		}
		log.Debug("repeated command; answering with the remembered result", "status", seen.result.Status)
		cm.send(*seen.result, log)
		return
	}
	var reject string
	switch {
	case !time.Now().Before(cmd.Deadline):
		reject = commandproto.RejectDeadline
	default:
		select {
		case cm.queue <- cmd:
		default:
			reject = commandproto.RejectBusy
		}
	}
	if reject == "" {
		cm.rememberLocked(cmd.ID, nil, cmd.Deadline)
		cm.mu.Unlock()
		log.Debug("command queued")
		return
	}
	r := commandproto.Result{ID: cmd.ID, Status: commandproto.StatusRejected, Error: reject}
	cm.stats.Rejected++
	cm.rememberLocked(cmd.ID, &r, cmd.Deadline)
	cm.mu.Unlock()
	log.Warn("command rejected", "reason", reject, "deadline", cmd.Deadline)
	cm.send(r, log)
}

// rememberLocked records id's result (nil: pending), forgetting the oldest
// ID beyond commandMemory. cm.mu is held.
func (cm *commander) rememberLocked(id string, r *commandproto.Result, deadline time.Time) {
	if seen, ok := cm.results[id]; ok {
		seen.result = r
		return
	}
	if len(cm.order) >= commandMemory {
		delete(cm.results, cm.order[0])
		cm.order = cm.order[1:]
	}
	cm.results[id] = &remembered{result: r, deadline: deadline}
	cm.order = append(cm.order, id)
}

// send hands a result to the publishing goroutine without blocking: the
// receive goroutine must not wait for a publish, whose acknowledgement it
// would have to read.
func (cm *commander) send(r commandproto.Result, log *slog.Logger) {
	select {
	case cm.out <- r:
	default:
		cm.mu.Lock()
		cm.stats.Dropped++
		cm.mu.Unlock()
		log.Warn("too many results waiting to be sent; result dropped", "status", r.Status)
	}
}

// run calls the handler for queued commands, one at a time, until Close.
func (cm *commander) run() {
	defer cm.c.wg.Done()
	for {
		select {
		case <-cm.c.life.Done():
			return
		case cmd := <-cm.queue:
			r := cm.execute(cmd)
			cm.mu.Lock()
			if r.Status == commandproto.StatusRejected {
				cm.stats.Rejected++
			}
			cm.rememberLocked(cmd.ID, &r, cmd.Deadline)
			cm.mu.Unlock()
			select {
			case cm.out <- r:
			case <-cm.c.life.Done():
				return
			}
		}
	}
}

// execute runs one command and makes its result.
func (cm *commander) execute(cmd Command) commandproto.Result {
	log := cm.log.With(slog.String("command", cmd.ID), slog.String("name", cmd.Name))
	r := commandproto.Result{ID: cmd.ID}
	if !time.Now().Before(cmd.Deadline) {
		r.Status, r.Error = commandproto.StatusRejected, commandproto.RejectDeadline
		log.Warn("command waited past its deadline; rejected", "deadline", cmd.Deadline)
		return r
	}
	ctx, cancel := context.WithDeadline(cm.c.life, cmd.Deadline)
	start := time.Now()
	body, err := cm.h(ctx, cmd)
	cancel()
	took := time.Since(start)
	switch {
	case errors.Is(err, ErrUnknownCommand):
		r.Status, r.Error = commandproto.StatusRejected, commandproto.RejectUnknown
	case err != nil:
		r.Status, r.Error = commandproto.StatusError, commandproto.CleanError(err.Error())
		if r.Error == "" {
			r.Error = "the command failed"
		}
	default:
		r.Status = commandproto.StatusOK
		if len(body) > 0 {
			if reason := badBody(body); reason != "" {
				r.Status, r.Error = commandproto.StatusError, reason
				log.Error("command handler returned an invalid body; answering with an error", "reason", reason)
				break
			}
			r.Body = bytes.Clone(body) // the handler might reuse its buffer
		}
	}
	log.Info("command handled", "status", r.Status, "took", took)
	return r
}

// badBody says what is wrong with a handler's body, or "" if nothing is.
func badBody(b json.RawMessage) string {
	switch {
	case len(b) > commandproto.MaxBody:
		return fmt.Sprintf("the device's answer of %d bytes exceeds the %d-byte limit", len(b), commandproto.MaxBody)
	case !utf8.Valid(b) || !json.Valid(b):
		return "the device's answer is not valid JSON"
	}
	return ""
}

// publish sends results until Close. Each publish may wait for a
// connection, but not much beyond its command's deadline, after which
// Warden no longer listens.
func (cm *commander) publish() {
	defer cm.c.wg.Done()
	for {
		select {
		case <-cm.c.life.Done():
			return
		case r := <-cm.out:
			cm.publishOne(r)
		}
	}
}

func (cm *commander) publishOne(r commandproto.Result) {
	log := cm.log.With(slog.String("command", r.ID))
	payload, err := r.Marshal()
	if err == nil {
		var deadline time.Time
		cm.mu.Lock()
		if seen, ok := cm.results[r.ID]; ok {
			deadline = seen.deadline
		}
		cm.mu.Unlock()
		bound := max(time.Until(deadline), 0) + publishGrace
		ctx, cancel := context.WithTimeout(cm.c.life, bound)
		err = cm.c.PublishUp(ctx, commandproto.ChannelResult, payload, 1)
		cancel()
	}
	cm.mu.Lock()
	if err != nil {
		cm.stats.Dropped++
	} else {
		cm.stats.Answered++
	}
	cm.mu.Unlock()
	switch {
	case err != nil && cm.c.life.Err() != nil:
		log.Debug("result not sent: the client is closing", "status", r.Status)
	case err != nil:
		log.Warn("result not sent", "status", r.Status, "reason", err)
	}
}
