package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/apiclient"
	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/rotation"
	"github.com/warden-iot/warden/internal/store"
)

func (c *cli) caRotateCmd() *cobra.Command {
	var grace time.Duration
	var asJSON, noWait bool
	cmd := &cobra.Command{
		Use:   "rotate [--grace 30d]",
		Short: "Replace the issuing CA and re-issue every active device's certificate",
		Long: `rotate creates a new issuing CA under the root (the root key must be on this
server: ` + "`warden ca import-root-key`" + ` puts an exported one back), re-issues
the certificate of every active device from its stored CSR, and delivers
each on private/<id>/cert/new (a retained message, so that devices that are
offline now get it when they next connect). The device SDK checks a
delivery (same key, same device, chains to the pinned root), stores it and
reconnects with it; no private key leaves a device.

The old issuing CA stays trusted until --grace ends or every device has
connected with its new certificate, whichever comes first; then it is
retired and connections still using it are cut. A device that missed the
grace period is refused and recovers through enrollment
(` + "`warden device preregister ID --recover`" + `).

With the server running the rotation happens in the server and this command
follows it until every certificate is delivered; ` + "`warden ca status`" + ` shows
how many devices have switched. Without a running server the certificates
are re-issued now and delivered when the server starts. A server killed
mid-rotation resumes it when it starts again.`,
		Example: `  warden ca rotate --grace 30d
  warden ca status --watch`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			var bar *progressbar.ProgressBar
			if l, ok := svc.(admin.Local); ok {
				started := false
				l.Progress = func(n, total int) {
					if !started {
						started = true
						fmt.Fprintln(c.err, "No server is running: re-issuing the certificates here; the server delivers them when it starts.")
						if c.interactive() {
							bar = c.bar(total, "re-issuing")
						}
					}
					if bar != nil {
						_ = bar.Set(n)
					}
				}
				svc = l
			}
			r, err := svc.RotateCA(cmd.Context(), grace)
			if bar != nil {
				_ = bar.Finish()
			}
			if err != nil {
				return err
			}
			_, online := svc.(*apiclient.Client)
			if online && !noWait {
				if err := c.followDelivery(cmd.Context(), svc); err != nil {
					return err
				}
			}
			st, err := svc.CAStatus(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return c.printJSON(st)
			}
			fmt.Fprintf(c.out, "Rotation %s: issuing CA %s replaced by %s.\n", r.ID, shortFP(r.OldIssuer), shortFP(r.NewIssuer))
			printCAStatus(c.out, st, time.Now())
			return nil
		},
	}
	durationVar(cmd.Flags(), &grace, "grace", 30*24*time.Hour, "how long the old issuing CA stays trusted at most (e.g. 7d, 36h)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the rotation has started, without following the deliveries")
	return cmd
}

// interactive reports whether progress bars make sense on c.err.
func (c *cli) interactive() bool {
	f, ok := c.err.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (c *cli) bar(total int, what string) *progressbar.ProgressBar {
	return progressbar.NewOptions(total, progressbar.OptionSetWriter(c.err), progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(true), progressbar.OptionClearOnFinish())
}

// followDelivery shows the running server re-issuing and delivering until
// no certificate waits for either.
func (c *cli) followDelivery(ctx context.Context, svc admin.Service) error {
	var bar *progressbar.ProgressBar
	defer func() {
		if bar != nil {
			_ = bar.Finish()
		}
	}()
	for {
		st, err := svc.CAStatus(ctx)
		if err != nil {
			return err
		}
		if st.Rotation == nil || st.Rotation.State != store.RotationRunning {
			return nil
		}
		undelivered := st.Devices[store.RotationDevicePending] + st.Devices[store.RotationDeviceIssued]
		if bar == nil && c.interactive() && st.Total > 0 {
			bar = c.bar(st.Total, "re-issuing and delivering")
		}
		if bar != nil {
			_ = bar.Set(st.Total - undelivered)
		}
		if undelivered == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *cli) caStatusCmd() *cobra.Command {
	var asJSON, watch bool
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "status [--watch]",
		Short: "Show the issuing CAs and how many devices have switched in the latest rotation",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			return c.watch(cmd.Context(), watch && !asJSON, every, func() (bool, error) {
				st, err := svc.CAStatus(cmd.Context())
				if err != nil {
					return false, err
				}
				if asJSON {
					return false, c.printJSON(st)
				}
				printCAStatus(c.out, st, time.Now())
				return st.Rotation != nil && st.Rotation.State == store.RotationRunning, nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&watch, "watch", false, "print again every --every until the rotation finishes")
	durationVar(cmd.Flags(), &every, "every", 5*time.Second, "interval for --watch")
	return cmd
}

func (c *cli) caRetireIssuerCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "retire-issuer FINGERPRINT",
		Short: "Stop trusting an old issuing CA now, before its grace period ends",
		Long: `retire-issuer ends an old issuing CA's grace period at once: certificates it
signed are refused from now on and connections still using them are cut.
Use it when ` + "`warden ca status`" + ` shows that the devices that matter have
switched. FINGERPRINT is the SHA-256 fingerprint ` + "`warden ca status`" + ` prints
(at least 8 leading hex digits, or OpenSSL's colon form).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			res, err := svc.RetireIssuer(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Retired issuing CA %s; %d connections cut.\n", args[0], res.ConnectionsCut)
			printCAStatus(c.out, res.Status, time.Now())
			return nil
		},
	}
}

func (c *cli) caRevokeIssuerCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke-issuer FINGERPRINT --reason TEXT",
		Short: "Distrust an issuing CA for good (its key leaked) and cut every device still using it",
		Long: `revoke-issuer distrusts an issuing CA at once and for good, for when its key
may have leaked: every connection made with a certificate it signed is cut,
and those devices are refused until they get a new certificate through a
recovery enrollment (` + "`warden device preregister ID --recover`" + `). The current
issuing CA cannot be revoked: rotate first (` + "`warden ca rotate`" + `), then
revoke the old one. Revocation is final and is recorded in the audit log.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			res, err := svc.RevokeIssuer(cmd.Context(), args[0], reason)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Revoked issuing CA %s; %d connections cut.\n", args[0], res.ConnectionsCut)
			printCAStatus(c.out, res.Status, time.Now())
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded with the revocation and in the audit log)")
	_ = cmd.MarkFlagRequired("reason")
	return cmd
}

func shortFP(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}

func printCAStatus(w io.Writer, st rotation.Status, now time.Time) {
	fmt.Fprintln(w, "Issuing CAs:")
	for _, is := range st.Issuers {
		extra := ""
		switch is.State {
		case "grace":
			if is.GraceUntil.IsZero() {
				extra = "trusted until retired"
			} else {
				extra = "trusted until " + is.GraceUntil.Format(time.RFC3339) + " (" + config.FormatDuration(is.GraceUntil.Sub(now).Round(time.Minute)) + " left)"
			}
		case "retired":
			extra = "retired " + is.RetiredAt.Format(time.RFC3339)
		case "revoked":
			extra = "revoked " + is.RevokedAt.Format(time.RFC3339)
			if is.Reason != "" {
				extra += ": " + is.Reason
			}
		case "current":
			extra = "signs new certificates; expires " + is.NotAfter.Format("2006-01-02")
		}
		fmt.Fprintf(w, "  %-8s %s  %s\n", is.State, is.Fingerprint, extra)
	}
	r := st.Rotation
	if r == nil {
		fmt.Fprintln(w, "No rotation yet.")
		return
	}
	fmt.Fprintf(w, "Rotation %s: %s (started %s)\n", r.ID, r.State, r.CreatedAt.Format(time.RFC3339))
	if r.Reason != "" {
		fmt.Fprintf(w, "  %s\n", r.Reason)
	}
	if st.Total > 0 {
		fmt.Fprintf(w, "  switched %d of %d devices (%.1f%%)\n", st.Switched(), st.Total, 100*float64(st.Switched())/float64(st.Total))
	} else {
		fmt.Fprintln(w, "  no devices to switch")
	}
	var parts []string
	for _, s := range []string{store.RotationDevicePending, store.RotationDeviceIssued, store.RotationDeviceDelivered, store.RotationDeviceSwitched, store.RotationDeviceFailed} {
		parts = append(parts, fmt.Sprintf("%s %d", s, st.Devices[s]))
	}
	fmt.Fprintf(w, "  %s\n", strings.Join(parts, ", "))
	if r.State == store.RotationRunning {
		fmt.Fprintf(w, "  the old issuing CA is trusted until %s, or until every device has switched\n", r.GraceUntil.Format(time.RFC3339))
	}
	if len(st.Waiting) > 0 && r.State == store.RotationRunning {
		ids := make([]string, len(st.Waiting))
		for i, d := range st.Waiting {
			ids[i] = d.DeviceID
		}
		fmt.Fprintf(w, "  not switched yet (first %d): %s\n", len(ids), strings.Join(ids, " "))
	}
	for _, d := range st.Failed {
		fmt.Fprintf(w, "  failed: %s (%s)\n", d.DeviceID, d.Reason)
	}
}
