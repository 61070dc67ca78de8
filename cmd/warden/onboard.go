package main

import (
	"bufio"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/internal/api"
	"github.com/warden-iot/warden/internal/apiclient"
	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/app"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/onboard"
	"github.com/warden-iot/warden/internal/store"
)

// onboardEnv is where the onboarding commands act: the running server's
// API, through its admin socket, while `warden serve` runs on this data
// directory (api is set), and the data directory itself otherwise.
type onboardEnv struct {
	api *apiclient.Client

	env     *app.Env
	rec     *audit.Log
	onboard *onboard.Service
	tokens  *apitoken.Service
}

func (c *cli) openOnboard(cmd *cobra.Command) (*onboardEnv, func(), error) {
	cfg, log, err := c.load(cmd)
	if err != nil {
		return nil, nil, err
	}
	client, err := c.server(cmd.Context(), cfg, log)
	if err != nil {
		return nil, nil, err
	}
	if client != nil {
		return &onboardEnv{api: client}, func() {}, nil
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
	ob, err := env.OpenOnboard(rec, nil)
	if err != nil {
		rec.Close()
		env.Close()
		return nil, nil, err
	}
	return &onboardEnv{env: env, rec: rec, onboard: ob, tokens: env.OpenTokens(rec)}, func() { rec.Close(); env.Close() }, nil
}

func (c *cli) devicePreregisterCmd() *cobra.Command {
	var model, secretOut string
	var tags []string
	var recovery bool
	cmd := &cobra.Command{
		Use:   "preregister ID --enroll-secret-out FILE",
		Short: "Record a device that will enroll itself with its own key and a factory secret (or --recover a registered one)",
		Long: `preregister records a device ID that may enroll once (docs/onboarding.md):
the device generates its key itself (on chip, never exported), sends a CSR to
/.well-known/est/simpleenroll (or private/<id>/cert/csr over MQTT with a claim
certificate), and proves it was preregistered with an HMAC of the CSR keyed
by a random 32-byte enrollment secret.

Warden keeps the secret sealed; FILE (JSON, mode 0600) receives it once, for
the factory to program into the device. A secret enrolls once: a second
enrollment is refused, and knowing the device ID alone enrolls nothing.

--recover re-arms a device that is registered already but can no longer
authenticate: it missed a CA rotation's grace period (its issuing CA is no
longer trusted), its certificate expired, or it lost its key. Put the new
FILE on the device in place of its old secret file; the device then runs its
normal enrollment (simpleenroll, without a client certificate) with it, with
its old key or a new one. When it enrolls it keeps its ID, model, tags and
owner, gets a new certificate, and every earlier certificate of the device is
revoked. The recovery secret works once, and replaces any earlier secret of
the device. A disabled device must be enabled before it can recover; a
revoked one never can.`,
		Example: `  warden device preregister 0badf00d --model sensor-v2 --enroll-secret-out 0badf00d.enroll.json
  warden device preregister 0badf00d --recover --enroll-secret-out 0badf00d.recover.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := identity.ValidateDeviceID(id); err != nil {
				return err
			}
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			if recovery && (model != "" || len(t) > 0) {
				return fmt.Errorf("--recover keeps the model and tags device %s has; drop --model and --tag (change tags on the device itself)", id)
			}
			if _, err := os.Stat(secretOut); err == nil {
				return fmt.Errorf("%s exists; refusing to overwrite an enrollment secret (move it away first)", secretOut)
			}
			oe, done, err := c.openOnboard(cmd)
			if err != nil {
				return err
			}
			defer done()
			file, err := oe.preregister(cmd.Context(), onboard.Preregistration{DeviceID: id, Model: model, Tags: t, Recovery: recovery})
			switch {
			case !recovery && errors.Is(err, store.ErrConflict):
				return fmt.Errorf("%w; if device %s is registered and can no longer connect, re-arm it with --recover", err, id)
			case err != nil:
				return err
			}
			b, err := file.Marshal()
			clear(file.Secret)
			if err != nil {
				return err
			}
			if err := fileutil.WriteNewFileAtomic(secretOut, b, 0o600); err != nil {
				if recovery {
					return fmt.Errorf("device %s is armed for recovery, but its secret could not be written (%w); run the command again: a new recovery secret replaces this one", id, err)
				}
				return fmt.Errorf("device %s is preregistered, but its secret could not be written (%w); remove it with `warden device unregister %s` and try again", id, err, id)
			}
			if recovery {
				fmt.Fprintf(c.out, "Armed device %s for recovery enrollment\n  enrollment secret  %s (mode 0600; put it on the device in place of its old secret file, then delete it)\n"+
					"  when the device enrolls with it, its earlier certificates are revoked\n", id, secretOut)
				return nil
			}
			fmt.Fprintf(c.out, "Preregistered device %s\n  enrollment secret  %s (mode 0600; program it into the device, then delete it)\n", id, secretOut)
			return nil
		},
	}
	cmd.Flags().BoolVar(&recovery, "recover", false, "re-arm a registered device that can no longer authenticate (missed a CA rotation's grace period, expired certificate, lost key); its earlier certificates are revoked when it enrolls")
	cmd.Flags().StringVar(&model, "model", "", "device model given to the device when it enrolls")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag key=value given to the device when it enrolls (repeatable)")
	cmd.Flags().StringVar(&secretOut, "enroll-secret-out", "", "file to write the enrollment secret to (must not exist)")
	_ = cmd.MarkFlagRequired("enroll-secret-out")
	return cmd
}

func (c *cli) deviceUnregisterCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "unregister ID",
		Short: "Remove a preregistration (or an allow-list entry) the device has not used",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			oe, done, err := c.openOnboard(cmd)
			if err != nil {
				return err
			}
			defer done()
			if err := oe.unregister(cmd.Context(), args[0]); err != nil {
				return fmt.Errorf("unregister %s: %w", args[0], err)
			}
			fmt.Fprintf(c.out, "Removed the enrollment of %s\n", args[0])
			return nil
		},
	}
}

func (c *cli) deviceEnrollmentsCmd() *cobra.Command {
	var claim string
	var unused, asJSON bool
	cmd := &cobra.Command{
		Use:   "enrollments",
		Short: "List preregistered devices and claim-certificate allow-lists",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			oe, done, err := c.openOnboard(cmd)
			if err != nil {
				return err
			}
			defer done()
			all, err := oe.enrollments(cmd.Context(), store.EnrollmentFilter{Claim: claim, Unused: unused})
			if err != nil {
				return err
			}
			if asJSON {
				return c.printJSON(all)
			}
			rows := make([][]string, len(all))
			for i, e := range all {
				used := "-"
				if e.Used() {
					used = e.UsedAt.Format(time.RFC3339)
				}
				recovery := "-"
				if e.Recovery {
					recovery = "yes"
				}
				rows[i] = []string{e.DeviceID, e.Method, e.Claim, e.Model, recovery, used}
			}
			c.table([]string{"DEVICE", "METHOD", "CLAIM CERT", "MODEL", "RECOVERY", "ENROLLED"}, rows)
			return nil
		},
	}
	cmd.Flags().StringVar(&claim, "claim", "", "only this claim certificate's allow-list")
	cmd.Flags().BoolVar(&unused, "unused", false, "only devices that have not enrolled yet")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (c *cli) claimCertCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "claim-cert",
		Short: "Fleet claim certificates: one certificate a factory line shares to enroll an allow-list of devices",
		Long: `A claim certificate (URI SAN urn:warden:claim:NAME) may only enroll: only
the device IDs on its allow-list, and each only once, over EST or over MQTT
(client ID = the device ID; it may publish private/<id>/cert/csr and read
private/<id>/cert/new, nothing else). It is how AWS IoT's fleet provisioning
by claim works: a stolen claim certificate can enroll at most the unused IDs
of its list, and revoking it stops that at once.`,
	}
	cmd.AddCommand(c.claimCertCreateCmd(), c.claimCertAllowCmd(), c.claimCertListCmd(), c.claimCertRevokeCmd())
	return cmd
}

// readAllowList reads device IDs from --allow FILE (one per line, '#'
// comments) and --allow-id.
func readAllowList(file string, ids []string) ([]store.Enrollment, error) {
	all := append([]string(nil), ids...)
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if err := identity.ValidateDeviceID(line); err != nil {
				return nil, fmt.Errorf("%s:%d: %w", file, n, err)
			}
			all = append(all, line)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read %s: %w", file, err)
		}
	}
	out := make([]store.Enrollment, len(all))
	for i, id := range all {
		out[i] = store.Enrollment{DeviceID: id}
	}
	return out, nil
}

func (c *cli) claimCertCreateCmd() *cobra.Command {
	var allowFile, outDir, model string
	var allowIDs, tags []string
	var lifetime time.Duration
	cmd := &cobra.Command{
		Use:   "create NAME --allow FILE --out DIR",
		Short: "Issue a claim certificate with an allow-list of device IDs",
		Example: `  warden claim-cert create line-7 --allow line-7.ids --model sensor-v2 --out ./claim
  warden claim-cert create bench --allow-id dev-1 --allow-id dev-2 --out ./claim --lifetime 720h`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := identity.ValidateClaimName(name); err != nil {
				return err
			}
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			allow, err := readAllowList(allowFile, allowIDs)
			if err != nil {
				return err
			}
			for i := range allow {
				allow[i].Model, allow[i].Tags = model, t
			}
			cfg, _, err := c.load(cmd)
			if err != nil {
				return err
			}
			root, err := c.rootPEM(cfg)
			if err != nil {
				return err
			}
			oe, done, err := c.openOnboard(cmd)
			if err != nil {
				return err
			}
			defer done()
			km, err := newKeyMaterial(name, "pem")
			if err != nil {
				return err
			}
			if err := writeCA(outDir, root); err != nil {
				return err
			}
			notAfter, chain, err := oe.addClaimCert(cmd.Context(), name, km.csrDER, lifetime, allow)
			if err != nil {
				return err
			}
			certPath, keyPath := filepath.Join(outDir, name+".crt"), filepath.Join(outDir, name+".key")
			if err := writeFiles(certPath, chain, keyPath, km.key); err != nil {
				return fmt.Errorf("claim certificate %s is issued but its files could not be written (%w); revoke it with `warden claim-cert revoke %s`", name, err, name)
			}
			fmt.Fprintf(c.out, "Issued claim certificate %s (valid until %s), %d device IDs allowed\n  certificate  %s\n  key          %s\n  root to pin  %s\n",
				name, notAfter.Format(time.RFC3339), len(allow), certPath, keyPath, filepath.Join(outDir, "ca.crt"))
			return nil
		},
	}
	cmd.Flags().StringVar(&allowFile, "allow", "", "file of device IDs it may enroll, one per line")
	cmd.Flags().StringArrayVar(&allowIDs, "allow-id", nil, "a device ID it may enroll (repeatable)")
	cmd.Flags().StringVar(&outDir, "out", "", "directory for NAME.crt, NAME.key and ca.crt")
	cmd.Flags().StringVar(&model, "model", "", "model given to the devices it enrolls")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag key=value given to the devices it enrolls (repeatable)")
	durationVar(cmd.Flags(), &lifetime, "lifetime", 0, "certificate lifetime, e.g. 90d or 720h (default 365d, one year)")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func (c *cli) claimCertAllowCmd() *cobra.Command {
	var allowFile, model string
	var allowIDs []string
	cmd := &cobra.Command{
		Use:   "allow NAME (--allow FILE | --allow-id ID ...)",
		Short: "Add device IDs to a claim certificate's allow-list",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			allow, err := readAllowList(allowFile, allowIDs)
			if err != nil {
				return err
			}
			if len(allow) == 0 {
				return fmt.Errorf("no device IDs given: use --allow FILE or --allow-id ID")
			}
			for i := range allow {
				allow[i].Model = model
			}
			oe, done, err := c.openOnboard(cmd)
			if err != nil {
				return err
			}
			defer done()
			if err := oe.allowClaim(cmd.Context(), args[0], allow); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Allowed %d more device IDs on %s\n", len(allow), args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&allowFile, "allow", "", "file of device IDs, one per line")
	cmd.Flags().StringArrayVar(&allowIDs, "allow-id", nil, "a device ID (repeatable)")
	cmd.Flags().StringVar(&model, "model", "", "model given to the devices it enrolls")
	return cmd
}

func (c *cli) claimCertListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List claim certificates",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			oe, done, err := c.openOnboard(cmd)
			if err != nil {
				return err
			}
			defer done()
			cs, unused, err := oe.claimCerts(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				for i := range cs {
					cs[i].Certificate = nil
				}
				return c.printJSON(cs)
			}
			rows := make([][]string, len(cs))
			for i, cc := range cs {
				state := "active"
				if cc.Revoked() {
					state = "revoked"
				}
				rows[i] = []string{cc.Name, state, cc.NotAfter.Format(time.RFC3339), fmt.Sprint(unused[i])}
			}
			c.table([]string{"NAME", "STATE", "NOT AFTER", "UNUSED IDS"}, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (c *cli) claimCertRevokeCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a claim certificate: it enrolls nothing more, and its unused allow-list is dropped",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			oe, done, err := c.openOnboard(cmd)
			if err != nil {
				return err
			}
			defer done()
			if err := oe.revokeClaimCert(cmd.Context(), args[0], reason); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Revoked claim certificate %s\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the audit log)")
	return cmd
}

func (c *cli) tokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "API tokens for operators and apps (HTTPS API on the api listener)",
		Long: `API tokens authenticate calls to Warden's HTTPS API (Authorization: Bearer
<token>). Warden stores only a hash; the token is printed once.

Roles:
  admin     everything
  operator  devices, rollouts, commands
  viewer    read only
  app       only the devices its user owns; may mint claim tokens (POST /v1/claims)`,
	}
	cmd.AddCommand(c.tokenCreateCmd(), c.tokenListCmd(), c.tokenRevokeCmd())
	return cmd
}

func (c *cli) tokenCreateCmd() *cobra.Command {
	var role, user, note string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:     "create --role ROLE --user USER",
		Short:   "Create an API token and print it once",
		Example: `  warden token create --role app --user alice@example.com --note "mobile app"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			oe, done, err := c.openOnboard(cmd)
			if err != nil {
				return err
			}
			defer done()
			tok, rec, err := oe.createToken(cmd.Context(), role, user, note, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.err, "Created token %s (role %s, user %s). It is shown once; store it now:\n", rec.ID, rec.Role, rec.User)
			fmt.Fprintln(c.out, tok)
			return nil
		},
	}
	cmd.Flags().StringVar(&role, "role", "", "admin, operator, viewer or app")
	cmd.Flags().StringVar(&user, "user", "", "the user the token acts for")
	cmd.Flags().StringVar(&note, "note", "", "what it is for")
	durationVar(cmd.Flags(), &ttl, "ttl", 0, "expiry, e.g. 90d or 12h (0 = none)")
	_ = cmd.MarkFlagRequired("role")
	_ = cmd.MarkFlagRequired("user")
	return cmd
}

func (c *cli) tokenListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List API tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			oe, done, err := c.openOnboard(cmd)
			if err != nil {
				return err
			}
			defer done()
			ts, err := oe.listTokens(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return c.printJSON(ts)
			}
			rows := make([][]string, len(ts))
			for i, t := range ts {
				state, last := "active", "-"
				if t.Revoked() {
					state = "revoked"
				} else if !t.ExpiresAt.IsZero() && time.Now().After(t.ExpiresAt) {
					state = "expired"
				}
				if !t.LastUsedAt.IsZero() {
					last = t.LastUsedAt.Format(time.RFC3339)
				}
				rows[i] = []string{t.ID, t.Role, t.User, state, last, t.Note}
			}
			c.table([]string{"ID", "ROLE", "USER", "STATE", "LAST USED", "NOTE"}, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (c *cli) tokenRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an API token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			oe, done, err := c.openOnboard(cmd)
			if err != nil {
				return err
			}
			defer done()
			if err := oe.revokeToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Revoked token %s\n", args[0])
			return nil
		},
	}
}

// The onboarding actions, through the API or on the data directory. What
// the API answers is turned back into the store's records, so that every
// command prints the same whichever way it went.

func (oe *onboardEnv) preregister(ctx context.Context, p onboard.Preregistration) (enrollproto.SecretFile, error) {
	if oe.api != nil {
		return oe.api.Preregister(ctx, api.EnrollmentRequest{DeviceID: p.DeviceID, Model: p.Model, Tags: p.Tags, Recovery: p.Recovery})
	}
	files, err := oe.onboard.Preregister(ctx, []onboard.Preregistration{p})
	if err != nil {
		return enrollproto.SecretFile{}, err
	}
	return files[0], nil
}

func (oe *onboardEnv) unregister(ctx context.Context, id string) error {
	if oe.api != nil {
		return oe.api.Unregister(ctx, id)
	}
	if err := oe.env.Store.DeleteEnrollment(ctx, id); err != nil {
		return err
	}
	oe.rec.Record(ctx, audit.Event{Action: "device.unregister", Outcome: "done", Actor: "operator", Subject: "device:" + id})
	return nil
}

// enrollments returns every enrollment matching f, all pages of it.
func (oe *onboardEnv) enrollments(ctx context.Context, f store.EnrollmentFilter) ([]store.Enrollment, error) {
	var all []store.Enrollment
	f.Limit = store.MaxListLimit
	for {
		var page []store.Enrollment
		if oe.api != nil {
			l, err := oe.api.Enrollments(ctx, f)
			if err != nil {
				return nil, err
			}
			for _, e := range l.Enrollments {
				page = append(page, fromAPIEnrollment(e))
			}
			f.After = l.NextAfter
		} else {
			var err error
			if page, err = oe.env.Store.ListEnrollments(ctx, f); err != nil {
				return nil, err
			}
			f.After = ""
			if len(page) == f.Limit {
				f.After = page[len(page)-1].DeviceID
			}
		}
		all = append(all, page...)
		if f.After == "" {
			return all, nil
		}
	}
}

// allowedIDs are the device IDs of an allow-list.
func allowedIDs(allow []store.Enrollment) []string {
	ids := make([]string, len(allow))
	for i, e := range allow {
		ids[i] = e.DeviceID
	}
	return ids
}

// wholeSeconds rounds d up: rounding down could make a short lifetime 0,
// which means the default.
func wholeSeconds(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }

// addClaimCert issues a claim certificate; every entry of allow has the
// same model and tags. It returns the certificate's expiry and its chain,
// PEM: the certificate, then the issuing CA.
func (oe *onboardEnv) addClaimCert(ctx context.Context, name string, csrDER []byte, lifetime time.Duration, allow []store.Enrollment) (time.Time, []byte, error) {
	if oe.api != nil {
		req := api.ClaimCertRequest{Name: name, CSR: csrDER, LifetimeSeconds: wholeSeconds(lifetime), Allow: allowedIDs(allow)}
		if len(allow) > 0 {
			req.Model, req.Tags = allow[0].Model, allow[0].Tags
		}
		out, err := oe.api.CreateClaimCert(ctx, req)
		if err != nil {
			return time.Time{}, nil, err
		}
		return out.ClaimCert.NotAfter, []byte(out.ChainPEM), nil
	}
	cc, cert, err := oe.env.Registry.AddClaimCert(ctx, name, csrDER, lifetime, allow)
	if err != nil {
		return time.Time{}, nil, err
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: oe.env.CA.Issuing().Raw})...)
	oe.rec.Record(ctx, audit.Event{Action: "claim-cert.create", Outcome: "done", Actor: "operator", Subject: "claim:" + name,
		Details: map[string]string{"serial": cc.Serial, "allowed": fmt.Sprint(len(allow))}})
	return cc.NotAfter, chain, nil
}

// allowClaim adds allow, whose entries all have the same model, to a
// claim certificate's allow-list.
func (oe *onboardEnv) allowClaim(ctx context.Context, name string, allow []store.Enrollment) error {
	if oe.api != nil {
		_, err := oe.api.AllowClaim(ctx, name, api.AllowRequest{Allow: allowedIDs(allow), Model: allow[0].Model})
		return err
	}
	if err := oe.env.Registry.AllowClaim(ctx, name, allow); err != nil {
		return err
	}
	oe.rec.Record(ctx, audit.Event{Action: "claim-cert.allow", Outcome: "done", Actor: "operator", Subject: "claim:" + name,
		Details: map[string]string{"allowed": fmt.Sprint(len(allow))}})
	return nil
}

// claimCerts lists the claim certificates and how many IDs of each one's
// allow-list have not enrolled.
func (oe *onboardEnv) claimCerts(ctx context.Context) ([]store.ClaimCert, []int, error) {
	if oe.api != nil {
		list, err := oe.api.ClaimCerts(ctx)
		if err != nil {
			return nil, nil, err
		}
		cs, unused := make([]store.ClaimCert, len(list)), make([]int, len(list))
		for i, cc := range list {
			cs[i], unused[i] = fromAPIClaimCert(cc), cc.Unused
		}
		return cs, unused, nil
	}
	cs, err := oe.env.Store.ListClaimCerts(ctx)
	if err != nil {
		return nil, nil, err
	}
	unused := make([]int, len(cs))
	for i, cc := range cs {
		es, err := oe.enrollments(ctx, store.EnrollmentFilter{Claim: cc.Name, Unused: true})
		if err != nil {
			return nil, nil, err
		}
		unused[i] = len(es)
	}
	return cs, unused, nil
}

func (oe *onboardEnv) revokeClaimCert(ctx context.Context, name, reason string) error {
	if oe.api != nil {
		_, err := oe.api.RevokeClaimCert(ctx, name, reason)
		return err
	}
	if _, err := oe.env.Store.RevokeClaimCert(ctx, name, reason, time.Now()); err != nil {
		return err
	}
	oe.rec.Record(ctx, audit.Event{Action: "claim-cert.revoke", Outcome: "done", Actor: "operator", Subject: "claim:" + name, Reason: reason})
	return nil
}

// createToken returns the new token, the only copy of it, and its record.
func (oe *onboardEnv) createToken(ctx context.Context, role, user, note string, ttl time.Duration) (string, store.APIToken, error) {
	if oe.api != nil {
		out, err := oe.api.CreateToken(ctx, role, user, note, ttl)
		if err != nil {
			return "", store.APIToken{}, err
		}
		return out.Secret, fromAPIToken(out.Token), nil
	}
	return oe.tokens.Create(ctx, role, user, note, ttl)
}

func (oe *onboardEnv) listTokens(ctx context.Context) ([]store.APIToken, error) {
	if oe.api != nil {
		list, err := oe.api.Tokens(ctx)
		if err != nil {
			return nil, err
		}
		ts := make([]store.APIToken, len(list))
		for i, t := range list {
			ts[i] = fromAPIToken(t)
		}
		return ts, nil
	}
	return oe.tokens.List(ctx)
}

func (oe *onboardEnv) revokeToken(ctx context.Context, id string) error {
	if oe.api != nil {
		_, err := oe.api.RevokeToken(ctx, id)
		return err
	}
	_, err := oe.tokens.Revoke(ctx, id)
	return err
}

// orZero is *t, or the zero time that the store's records use for none.
func orZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

func fromAPIEnrollment(e api.Enrollment) store.Enrollment {
	return store.Enrollment{DeviceID: e.DeviceID, Method: e.Method, Claim: e.Claim, Model: e.Model, Tags: e.Tags,
		Created: e.CreatedAt, UsedAt: orZero(e.UsedAt), Serial: e.Serial, Recovery: e.Recovery}
}

func fromAPIClaimCert(c api.ClaimCert) store.ClaimCert {
	return store.ClaimCert{Name: c.Name, Serial: c.Serial, Fingerprint: c.Fingerprint, NotAfter: c.NotAfter,
		CreatedAt: c.CreatedAt, RevokedAt: orZero(c.RevokedAt), Reason: c.Reason}
}

func fromAPIToken(t api.Token) store.APIToken {
	return store.APIToken{ID: t.ID, Role: t.Role, User: t.User, Note: t.Note, CreatedAt: t.CreatedAt,
		ExpiresAt: orZero(t.ExpiresAt), LastUsedAt: orZero(t.LastUsedAt), RevokedAt: orZero(t.RevokedAt)}
}
