package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/warden-iot/warden/internal/apiclient"
	"github.com/warden-iot/warden/internal/app"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// alertsEnv is where the alert and quarantine commands act: the running
// server's API, through its admin socket, while `warden serve` runs on
// this data directory (api is set), so that a release takes effect at
// once; the data directory itself otherwise.
type alertsEnv struct {
	api *apiclient.Client

	env *app.Env
	rec *audit.Log
}

func (c *cli) openAlerts(cmd *cobra.Command) (*alertsEnv, func(), error) {
	cfg, log, err := c.load(cmd)
	if err != nil {
		return nil, nil, err
	}
	client, err := c.server(cmd.Context(), cfg, log)
	if err != nil {
		return nil, nil, err
	}
	if client != nil {
		return &alertsEnv{api: client}, func() {}, nil
	}
	env, err := app.Open(cmd.Context(), cfg, quiet(log))
	if err != nil {
		return nil, nil, err
	}
	rec, err := audit.Open(env.Paths.AuditLog, quiet(log))
	if err != nil {
		env.Close()
		return nil, nil, err
	}
	return &alertsEnv{env: env, rec: rec}, func() { rec.Close(); env.Close() }, nil
}

func (c *cli) alertsCmd() *cobra.Command {
	var (
		since            time.Duration
		detector, device string
		all, asJSON      bool
		limit            int
	)
	cmd := &cobra.Command{
		Use:   "alerts [--since 24h] [--detector D] [--device ID] [--all] [--json]",
		Short: "List the anomaly monitor's alerts; acknowledge them; release quarantined devices",
		Long: `The anomaly monitor (docs/monitoring.md) watches what devices do: refused
connections, sealed messages that fail or replay, ACL denials, publish rates
and payload sizes far above a device's own, connect flapping, one identity
connecting from two places (a cloned key), silence, expiring certificates and
unapproved firmware. Each finding is an alert; a repeat within the cool-down
adds to its count.

Without flags, alerts lists the alerts nobody acknowledged yet, newest first.
--all includes acknowledged ones. Acknowledge an alert with
` + "`warden alerts ack ID`" + `; a later finding of the same kind raises a new alert.

While ` + "`warden serve`" + ` runs, these commands go through its API on the
admin socket; otherwise they act on the data directory.`,
		Example: `  warden alerts
  warden alerts --since 24h --detector cloned_identity
  warden alerts --device 0badf00d --all --json
  warden alerts ack 3f2a9c0d1e4b5a69`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 {
				return fmt.Errorf("--limit %d: list at least one alert", limit)
			}
			ae, done, err := c.openAlerts(cmd)
			if err != nil {
				return err
			}
			defer done()
			f := store.AlertFilter{Detector: detector, Device: device, Unacknowledged: !all, Limit: min(limit, store.MaxListLimit)}
			if since > 0 {
				f.Since = time.Now().Add(-since)
			}
			var list []store.Alert
			for len(list) < limit {
				page, err := ae.alerts(cmd.Context(), f)
				if err != nil {
					return err
				}
				list = append(list, page...)
				if len(page) < f.Limit {
					break
				}
				f.Before = page[len(page)-1].ID
				f.Limit = min(limit-len(list), store.MaxListLimit)
			}
			if asJSON {
				return c.printJSON(list)
			}
			if len(list) == 0 {
				what := "No unacknowledged alerts"
				if all {
					what = "No alerts"
				}
				fmt.Fprintln(c.out, what+".")
				return nil
			}
			rows := make([][]string, len(list))
			for i, a := range list {
				ack := "-"
				if a.Acknowledged() {
					ack = a.AcknowledgedBy
				}
				rows[i] = []string{a.ID, a.LastSeen.Local().Format(time.DateTime), a.Severity, a.Detector, alertSubject(a),
					strconv.Itoa(a.Count), a.Response, ack, a.Summary}
			}
			c.table([]string{"ID", "LAST SEEN", "SEVERITY", "DETECTOR", "SUBJECT", "COUNT", "RESPONSE", "ACK", "SUMMARY"}, rows)
			return nil
		},
	}
	durationVar(cmd.Flags(), &since, "since", 0, "only alerts seen within this long, e.g. 24h or 7d (0 = any time)")
	cmd.Flags().StringVar(&detector, "detector", "", "only this detector's alerts, e.g. auth_failures, cloned_identity")
	cmd.Flags().StringVar(&device, "device", "", "only alerts about this device")
	cmd.Flags().BoolVar(&all, "all", false, "include acknowledged alerts")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().IntVar(&limit, "limit", store.DefaultListLimit, "list at most this many alerts")
	cmd.AddCommand(c.alertsAckCmd(), c.alertsQuarantinedCmd(), c.deviceReleaseCmd())
	return cmd
}

// alertSubject is what an alert is about, for the table.
func alertSubject(a store.Alert) string {
	switch {
	case a.Device != "":
		return identity.Principal{Kind: identity.KindDevice, ID: a.Device}.String()
	case a.Service != "":
		return identity.Principal{Kind: identity.KindService, ID: a.Service}.String()
	case a.Remote != "":
		return "address:" + a.Remote
	}
	return "-"
}

func (c *cli) alertsAckCmd() *cobra.Command {
	var by string
	cmd := &cobra.Command{
		Use:   "ack ID...",
		Short: "Acknowledge alerts: they leave the default listing, and a new finding raises a new alert",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ae, done, err := c.openAlerts(cmd)
			if err != nil {
				return err
			}
			defer done()
			if err := ae.checkBy(by); err != nil {
				return err
			}
			var errs []error
			for _, id := range args {
				a, err := ae.acknowledge(cmd.Context(), id, by)
				if err != nil {
					errs = append(errs, fmt.Errorf("acknowledge %s: %w", id, err))
					continue
				}
				fmt.Fprintf(c.out, "Acknowledged %s (%s: %s)\n", id, a.Detector, a.Summary)
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().StringVar(&by, "by", defaultBy, "who acknowledges, as the alert and the audit log record it (without a running server only)")
	return cmd
}

func (c *cli) alertsQuarantinedCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "quarantined",
		Short: "List quarantined devices (they may only use their OTA and certificate topics)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ae, done, err := c.openAlerts(cmd)
			if err != nil {
				return err
			}
			defer done()
			qs, err := ae.quarantines(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return c.printJSON(qs)
			}
			if len(qs) == 0 {
				fmt.Fprintln(c.out, "No quarantined devices.")
				return nil
			}
			rows := make([][]string, len(qs))
			for i, q := range qs {
				alert := q.AlertID
				if alert == "" {
					alert = "-"
				}
				rows[i] = []string{q.DeviceID, q.CreatedAt.Local().Format(time.DateTime), q.Actor, alert, q.Reason}
			}
			c.table([]string{"DEVICE", "SINCE", "BY", "ALERT", "REASON"}, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// deviceReleaseCmd is `warden device release ID` (and `warden alerts
// release ID`): it lifts a quarantine in the store. A running server
// applies it at its next periodic check.
func (c *cli) deviceReleaseCmd() *cobra.Command {
	var by string
	return withBy(&cobra.Command{
		Use:   "release ID",
		Short: "Lift a device's quarantine (the monitor's response), so that it may use all its topics again",
		Long: `release lifts the quarantine the anomaly monitor (or an operator) put on a
device: it may again use all its topics when it next connects. Find the
cause first (` + "`warden alerts --device ID --all`" + `). A device quarantined for a
cloned identity needs a new key before it is released, or the copy comes
back with it: re-arm it with ` + "`warden device preregister ID --recover`" + ` (when
it enrolls again, every earlier certificate, the copied one too, is revoked).

While ` + "`warden serve`" + ` runs, the release goes through its API and takes
effect at once: the device's connection is cut, and its next session has all
its rights. Otherwise it is made in the data directory, and the server applies
it when it starts.`,
		Example: `  warden device release 0badf00d`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := identity.ValidateDeviceID(id); err != nil {
				return err
			}
			ae, done, err := c.openAlerts(cmd)
			if err != nil {
				return err
			}
			defer done()
			if err := ae.checkBy(by); err != nil {
				return err
			}
			q, err := ae.release(cmd.Context(), id, by)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Released device %s from quarantine (it was quarantined %s by %s: %s)\n",
				id, q.CreatedAt.Local().Format(time.DateTime), q.Actor, q.Reason)
			return nil
		},
	}, &by)
}

// withBy adds --by, who acts, to cmd.
func withBy(cmd *cobra.Command, by *string) *cobra.Command {
	cmd.Flags().StringVar(by, "by", defaultBy, "who acts, as the audit log records it (without a running server only)")
	return cmd
}

// defaultBy is who the commands say acted, and who the API records for
// whoever uses the admin socket.
const defaultBy = "operator"

// checkBy refuses a --by that the running server cannot record: its API
// records the caller it authenticated, which on the admin socket is the
// operator, and takes no one's word for another name.
func (ae *alertsEnv) checkBy(by string) error {
	if ae.api != nil && by != defaultBy {
		return fmt.Errorf("--by %q cannot be recorded while `warden serve` runs on this data directory: the change goes through its API, which records the admin socket's caller as %q; run the command without --by", by, defaultBy)
	}
	return nil
}

// alerts returns one page of alerts matching f.
func (ae *alertsEnv) alerts(ctx context.Context, f store.AlertFilter) ([]store.Alert, error) {
	if ae.api != nil {
		l, err := ae.api.Alerts(ctx, f)
		return l.Alerts, err
	}
	return ae.env.Store.ListAlerts(ctx, f)
}

func (ae *alertsEnv) acknowledge(ctx context.Context, id, by string) (store.Alert, error) {
	if ae.api != nil {
		return ae.api.AcknowledgeAlert(ctx, id)
	}
	a, err := ae.env.Store.AcknowledgeAlert(ctx, id, by, time.Now())
	if err != nil {
		return store.Alert{}, err
	}
	ae.rec.Record(ctx, audit.Event{Action: "alert.acknowledge", Outcome: "done", Actor: by, Subject: "alert:" + id, Reason: a.Detector})
	return a, nil
}

func (ae *alertsEnv) quarantines(ctx context.Context) ([]store.Quarantine, error) {
	if ae.api != nil {
		return ae.api.Quarantined(ctx)
	}
	return ae.env.Store.ListQuarantines(ctx)
}

// release lifts a device's quarantine and returns what it was.
func (ae *alertsEnv) release(ctx context.Context, id, by string) (store.Quarantine, error) {
	if ae.api != nil {
		qs, err := ae.api.Quarantined(ctx)
		if err != nil {
			return store.Quarantine{}, err
		}
		i := slices.IndexFunc(qs, func(q store.Quarantine) bool { return q.DeviceID == id })
		if i < 0 {
			return store.Quarantine{}, fmt.Errorf("release device %q: it is not quarantined: %w", id, store.ErrNotFound)
		}
		if _, err := ae.api.Release(ctx, id); err != nil {
			return store.Quarantine{}, err
		}
		return qs[i], nil
	}
	q, err := ae.env.Store.ClearQuarantine(ctx, id)
	if err != nil {
		return store.Quarantine{}, err
	}
	ae.rec.Record(ctx, audit.Event{Action: "device.release", Outcome: "done", Actor: by,
		Subject: identity.Principal{Kind: identity.KindDevice, ID: id}.String(), Reason: q.Reason})
	return q, nil
}
