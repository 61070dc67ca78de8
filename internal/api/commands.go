package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/warden-iot/warden/internal/command"
)

// Commander relays commands to devices; *command.Service implements it.
type Commander interface {
	Send(ctx context.Context, req command.Request) (command.Outcome, error)
}

// CommandRequest is the body of POST /v1/devices/{id}/commands.
type CommandRequest struct {
	Name string          `json:"name"`
	Body json.RawMessage `json:"body,omitempty"`
	// TimeoutSeconds is how long to wait for the device's answer: 1..300,
	// 0 or absent for 30.
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
}

// CommandResult is the device's answer.
type CommandResult struct {
	ID     string          `json:"id"`
	Status string          `json:"status"` // ok, error or rejected
	Body   json.RawMessage `json:"body,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// Error codes of the command relay.
const (
	codeOffline = "offline"
	codeTimeout = "timeout"
	codeBusy    = "busy"
)

func (a *API) sendCommand(c *call) (any, error) {
	if a.commands == nil {
		return nil, &httpError{http.StatusServiceUnavailable, codeInternal, "commands are not available on this server"}
	}
	var req CommandRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	if req.TimeoutSeconds < 0 || time.Duration(req.TimeoutSeconds)*time.Second > command.MaxTimeout {
		return nil, invalidf("timeout_seconds must be 1..%d (0 or absent: %d)", int(command.MaxTimeout/time.Second), int(command.DefaultTimeout/time.Second))
	}
	out, err := a.commands.Send(c.ctx(), command.Request{
		DeviceID: c.id(), Name: req.Name, Body: req.Body,
		Timeout: time.Duration(req.TimeoutSeconds) * time.Second,
		Actor:   c.actor() + " user:" + c.tok.User,
	})
	switch {
	case errors.Is(err, command.ErrOffline):
		return nil, &httpError{http.StatusConflict, codeOffline, "the device is not connected; nothing was sent"}
	case errors.Is(err, command.ErrBusy):
		return nil, &httpError{http.StatusTooManyRequests, codeBusy, "the device has too many commands waiting for answers; retry later"}
	case errors.Is(err, command.ErrTimeout):
		return nil, &httpError{http.StatusGatewayTimeout, codeTimeout, "the device did not answer in time (command " + out.ID + "); it may still act on it"}
	case err != nil:
		return nil, err
	}
	return CommandResult{ID: out.ID, Status: out.Status, Body: out.Body, Error: out.Error}, nil
}
