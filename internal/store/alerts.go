package store

import (
	"context"
	"time"

	"github.com/warden-iot/warden/internal/identity"
)

// Alert severities.
const (
	SeverityInfo     = "info"
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// Responses an alert records as taken against its device.
const (
	ResponseNone       = "none"
	ResponseDisconnect = "disconnect"
	ResponseQuarantine = "quarantine"
)

// Bounds on what an alert row holds. The monitor builds alerts partly from
// what unauthenticated peers claim (a client ID, an address), so every
// backend refuses anything larger rather than store it.
const (
	MaxAlertIDLength      = 64
	MaxAlertFieldLength   = 256  // detector, device, service, remote, acknowledged_by
	MaxAlertSummaryLength = 1024 // the human sentence
	MaxAlertDetails       = 32   // entries in Details
	MaxAlertDetailLength  = 512  // a Details key or value
)

// Alert is one finding of the anomaly monitor (docs/monitoring.md). The
// monitor does not store a repeat of a finding within its cool-down as a
// new row: it adds to Count and moves LastSeen.
type Alert struct {
	ID       string            `json:"id"`       // lowercase hex, unique
	Detector string            `json:"detector"` // e.g. "auth_failures"
	Severity string            `json:"severity"` // SeverityInfo, SeverityWarning or SeverityCritical
	Device   string            `json:"device,omitempty"`
	Service  string            `json:"service,omitempty"`
	Remote   string            `json:"remote,omitempty"` // peer address or host, when the finding has one
	Summary  string            `json:"summary"`          // one human sentence, with the numbers
	Details  map[string]string `json:"details"`          // never nil when read
	Response string            `json:"response"`         // ResponseNone, ResponseDisconnect or ResponseQuarantine
	Count    int               `json:"count"`            // findings merged into this alert; at least 1
	// CreatedAt is the first finding, LastSeen the latest.
	CreatedAt      time.Time `json:"created_at"`
	LastSeen       time.Time `json:"last_seen"`
	AcknowledgedAt time.Time `json:"acknowledged_at,omitzero"` // zero until acknowledged
	AcknowledgedBy string    `json:"acknowledged_by,omitempty"`
}

// Acknowledged reports whether an operator has acknowledged the alert.
func (a Alert) Acknowledged() bool { return !a.AcknowledgedAt.IsZero() }

// AlertFilter selects alerts for ListAlerts. Zero fields match anything.
type AlertFilter struct {
	Since          time.Time // only alerts last seen at or after Since
	Detector       string
	Device         string
	Unacknowledged bool // only alerts not acknowledged yet
	// Before is the paging cursor: only alerts listed after the alert with
	// this ID (older ones). ErrNotFound if there is no such alert.
	Before string
	Limit  int // <= 0 means DefaultListLimit; capped at MaxListLimit
}

// PageSize is the number of rows a backend returns at most for f.
func (f AlertFilter) PageSize() int {
	return DeviceFilter{Limit: f.Limit}.PageSize()
}

// Quarantine records that a device may use only its OTA and certificate
// topics until an operator releases it. It lives in the store so that a
// restart keeps the device quarantined.
type Quarantine struct {
	DeviceID  string    `json:"device_id"`
	Reason    string    `json:"reason"`
	AlertID   string    `json:"alert_id,omitempty"` // the alert that caused it; empty when an operator did
	Actor     string    `json:"actor"`              // "monitor", or the operator who quarantined it
	CreatedAt time.Time `json:"created_at"`
}

// ExpiringCredential is a credential the certificate expiry scan reports:
// what identifies it, without its certificate and CSR.
type ExpiringCredential struct {
	Serial      string
	SubjectKind identity.Kind
	SubjectID   string
	NotBefore   time.Time
	NotAfter    time.Time
}

// ExpiryFilter selects credentials for ExpiringCredentials.
type ExpiryFilter struct {
	From, To time.Time // NotAfter in [From, To)
	After    string    // paging cursor: only serials greater than After
	Limit    int       // <= 0 means DefaultListLimit; capped at MaxListLimit
}

// AlertStore keeps the anomaly monitor's alerts and quarantined devices.
// Every backend implements it.
type AlertStore interface {
	// CreateAlert stores a new alert. ErrConflict if the ID exists. Count
	// must be at least 1; a zero LastSeen defaults to CreatedAt.
	CreateAlert(ctx context.Context, a Alert) error
	// GetAlert returns ErrNotFound if there is no such alert.
	GetAlert(ctx context.Context, id string) (Alert, error)
	// UpdateAlert records add (at least 1) more findings merged into an
	// unacknowledged alert, and moves LastSeen to lastSeen if that is
	// later, in one atomic step, and returns the alert. ErrNotFound if
	// there is no such alert; ErrConflict if it is acknowledged: a finding
	// after an acknowledgement is news, so the caller raises a new alert.
	UpdateAlert(ctx context.Context, id string, add int, lastSeen time.Time) (Alert, error)
	// ListAlerts returns alerts matching f, newest first (CreatedAt, then
	// ID, descending).
	ListAlerts(ctx context.Context, f AlertFilter) ([]Alert, error)
	// AcknowledgeAlert marks an alert acknowledged by by (not empty) at
	// at. Acknowledging an acknowledged alert changes nothing: the first
	// acknowledgement stands. ErrNotFound if there is no such alert.
	AcknowledgeAlert(ctx context.Context, id, by string, at time.Time) (Alert, error)
	// PurgeAlerts deletes the alerts last seen before before, acknowledged
	// or not, and returns how many.
	PurgeAlerts(ctx context.Context, before time.Time) (int, error)

	// SetQuarantine records a quarantined device. ErrNotFound if the
	// device does not exist; ErrConflict if it is quarantined already (the
	// first quarantine stands).
	SetQuarantine(ctx context.Context, q Quarantine) error
	// ClearQuarantine lifts a device's quarantine and returns what it was.
	// ErrNotFound if the device is not quarantined.
	ClearQuarantine(ctx context.Context, deviceID string) (Quarantine, error)
	// ListQuarantines returns every quarantined device, ordered by ID.
	ListQuarantines(ctx context.Context) ([]Quarantine, error)

	// ExpiringCredentials is the monitor's certificate expiry scan: the
	// unrevoked credentials of active devices and services whose NotAfter
	// is in [f.From, f.To), except those the subject has already replaced
	// (it holds another unrevoked credential that expires later: a renewed
	// certificate's predecessor is not news), ordered by serial.
	ExpiringCredentials(ctx context.Context, f ExpiryFilter) ([]ExpiringCredential, error)
}
