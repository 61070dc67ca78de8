package api

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/warden-iot/warden/internal/store"
)

// Alerter lists, acknowledges and releases through the anomaly monitor;
// *monitor.Monitor implements it.
type Alerter interface {
	Alerts(ctx context.Context, f store.AlertFilter) ([]store.Alert, error)
	Acknowledge(ctx context.Context, id, actor string) (store.Alert, error)
	Release(ctx context.Context, deviceID, actor string) error
}

// AlertList is the answer of GET /v1/alerts, newest first.
type AlertList struct {
	Alerts []store.Alert `json:"alerts"`
	// NextBefore is the before= of the next (older) page; empty at the end.
	NextBefore string `json:"next_before,omitempty"`
}

func (a *API) alerter() (Alerter, error) {
	if a.alerts == nil {
		return nil, &httpError{http.StatusServiceUnavailable, codeInternal, "the anomaly monitor is not available on this server"}
	}
	return a.alerts, nil
}

// listAlerts serves GET /v1/alerts.
func (a *API) listAlerts(c *call) (any, error) {
	al, err := a.alerter()
	if err != nil {
		return nil, err
	}
	f, err := parseAlertQuery(c.r.URL.Query())
	if err != nil {
		return nil, err
	}
	list, err := al.Alerts(c.ctx(), f)
	if err != nil {
		return nil, err
	}
	out := AlertList{Alerts: list}
	if out.Alerts == nil {
		out.Alerts = []store.Alert{}
	}
	if len(list) == f.PageSize() && len(list) > 0 {
		out.NextBefore = list[len(list)-1].ID
	}
	return out, nil
}

// ackAlert serves POST /v1/alerts/{id}/ack.
func (a *API) ackAlert(c *call) (any, error) {
	al, err := a.alerter()
	if err != nil {
		return nil, err
	}
	got, err := al.Acknowledge(c.ctx(), c.id(), c.actor())
	c.done("alert:"+c.id(), err, nil)
	return got, err
}

// releaseDevice serves POST /v1/devices/{id}/release: the end of a
// quarantine.
func (a *API) releaseDevice(c *call) (any, error) {
	al, err := a.alerter()
	if err != nil {
		return nil, err
	}
	err = al.Release(c.ctx(), c.id(), c.actor())
	c.done("device:"+c.id(), err, nil)
	if err != nil {
		return nil, err
	}
	info, err := a.admin.Device(c.ctx(), c.id())
	if err != nil {
		return nil, err
	}
	return toDevice(info.Device), nil
}

// parseAlertQuery reads the query of GET /v1/alerts: each parameter at
// most once, values in range, nothing unknown.
func parseAlertQuery(q url.Values) (store.AlertFilter, error) {
	var f store.AlertFilter
	for k, vs := range q {
		if len(vs) != 1 {
			return store.AlertFilter{}, invalidf("query parameter %q is given %d times", k, len(vs))
		}
		v := vs[0]
		var err error
		switch k {
		case "since":
			f.Since, err = time.Parse(time.RFC3339, v)
		case "detector":
			f.Detector = v
		case "device":
			f.Device = v
		case "unacknowledged":
			f.Unacknowledged, err = strconv.ParseBool(v)
		case "before":
			f.Before = v
		case "limit":
			f.Limit, err = strconv.Atoi(v)
			if err == nil && (f.Limit < 1 || f.Limit > store.MaxListLimit) {
				return store.AlertFilter{}, invalidf("limit must be 1..%d", store.MaxListLimit)
			}
		default:
			return store.AlertFilter{}, invalidf("unknown query parameter %q", k)
		}
		if err != nil {
			return store.AlertFilter{}, invalidf("query parameter %s=%q: %v", k, v, err)
		}
	}
	return f, nil
}
