package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warden-iot/warden/internal/app"
	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/pki"
)

func (c *cli) initCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the master key and the CA (root, issuing CA, server certificate)",
		Long: `init creates, under the data directory:
  master.key        the key that seals every secret at rest (mode 0600; set
                    WARDEN_MASTER_KEY_FILE / --master-key-file to keep it elsewhere)
  pki/root.crt      the ECDSA P-256 root CA that devices pin
  pki/issuing.crt   the issuing CA below it (path length 0) that signs device certificates
  pki/server.crt    the broker's certificate, valid for every --hostname plus
                    localhost, 127.0.0.1 and ::1
CA private keys are stored sealed by the master key, never as plain PEM.
init refuses to overwrite an existing CA.`,
		Example: `  warden init --data /var/lib/warden --hostname mqtt.example.com --hostname 192.0.2.10`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := c.load(cmd)
			if err != nil {
				return err
			}
			ca, err := app.Initialize(cfg, quiet(log))
			if errors.Is(err, pki.ErrExists) {
				return fmt.Errorf("%w\nTo start over, move the data directory %s away first.", err, cfg.Paths().Data)
			}
			if err != nil {
				return err
			}
			p := cfg.Paths()
			fmt.Fprintf(c.out, "Initialised %s\n  root CA     %s (%s)\n  issuing CA  %s\n  master key  %s\n",
				p.Data, ca.Root().Subject.CommonName, pki.Fingerprint(ca.Root()), ca.Issuing().Subject.CommonName, p.MasterKey)
			fmt.Fprintf(c.out, "Next: warden serve --data %s\n", p.Data)
			return nil
		},
	}
	cmd.Flags().StringArray(config.FlagHostname, nil, "extra DNS name or IP address for the server certificate (repeatable)")
	return cmd
}

func (c *cli) serveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the broker, relay and HTTP endpoints (initialises the data directory on first run)",
		Long: `serve runs Warden on its embedded defaults: an MQTT broker that requires a
client certificate from Warden's CA on every connection, SQLite under the
data directory, and an HTTP listener with /healthz, /metrics and /crl.

Listeners:
  --mqtts ADDR   MQTT over TLS (default :8883). Profile strict = TLS 1.3 only;
                 compat = TLS 1.2 (ECDHE + AEAD suites only) and 1.3.
  --wss ADDR     MQTT over secure WebSocket (off unless set), same certificate rules.
  --mqtt ADDR    plain MQTT for envelope devices only (off unless set): username =
                 device ID, password = a single-use envelope; every publish must
                 be an envelope (docs/envelope.md).
  --api ADDR     HTTPS (default :8443): devices check for and download firmware
                 with their client certificate (docs/firmware.md).
  --http ADDR    health, metrics and CRL (default 127.0.0.1:8080); envelope
                 devices may also check for firmware here with sealed requests.

While serve runs, 'warden device ...' commands act on the running server
through the admin socket <data>/warden.sock (mode 0600), so revoking or
disabling a device cuts its live connection at once.`,
		Example: `  warden serve
  warden serve --data /var/lib/warden --mqtts :8883 --wss :8884 --hostname mqtt.example.com
  WARDEN_LIMITS__PUBLISH_RATE=20 warden serve --mqtts-tls-profile compat`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := c.load(cmd)
			if err != nil {
				return err
			}
			firstRun := !app.Initialized(cfg)
			srv, err := app.Start(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			defer srv.Close()
			c.banner(cfg, srv, firstRun)
			<-cmd.Context().Done()
			log.Info("shutting down")
			return nil
		},
	}
	config.AddServeFlags(cmd.Flags())
	return cmd
}

// banner tells a newcomer what runs and how to connect a first device.
func (c *cli) banner(cfg *config.Config, srv *app.Server, firstRun bool) {
	p := cfg.Paths()
	self := "warden"
	if strings.Contains(os.Args[0], "go-build") {
		self = "go run ./cmd/warden"
	}
	dataFlag := ""
	if def, err := filepath.Abs(config.Default().Data); err != nil || def != p.Data {
		dataFlag = " --data " + p.Data
	}
	port := "8883"
	if a := srv.Broker.Addr("mqtts"); a != nil {
		_, port, _ = net.SplitHostPort(a.String())
	}
	w := c.out
	if firstRun {
		fmt.Fprintf(w, "Initialised a new data directory at %s (master key, root and issuing CA).\n", p.Data)
	}
	fmt.Fprintf(w, "Warden is running.\n")
	fmt.Fprintf(w, "  mqtts  %s  (%s TLS profile, client certificate required)\n", srv.Broker.Addr("mqtts"), cfg.MQTTS.TLSProfile)
	if a := srv.Broker.Addr("wss"); a != nil {
		fmt.Fprintf(w, "  wss    %s%s\n", a, cfg.WSS.Path)
	}
	if a := srv.Broker.Addr("mqtt"); a != nil {
		fmt.Fprintf(w, "  mqtt   %s  (NO TLS: envelope devices only)\n", a)
	}
	if a := srv.APIAddr(); a != nil {
		fmt.Fprintf(w, "  api    https://%s  (%s TLS profile; firmware updates: /ota/v1/)\n", a, cfg.API.TLSProfile)
	}
	if a := srv.HTTPAddr(); a != nil {
		fmt.Fprintf(w, "  http   http://%s  (/healthz /metrics /crl)\n", a)
	}
	fmt.Fprintf(w, "  data   %s\n\n", p.Data)
	devDir := filepath.Join(".", "devices")
	svcDir := filepath.Join(".", "services")
	fmt.Fprintf(w, "Try it (in another terminal):\n")
	fmt.Fprintf(w, "  %s device add dev1%s --out %s\n", self, dataFlag, devDir)
	fmt.Fprintf(w, "  %s service add dashboard --role reader%s --out %s\n", self, dataFlag, svcDir)
	fmt.Fprintf(w, "  mosquitto_sub --cafile %[1]s/ca.crt --cert %[1]s/dashboard.crt --key %[1]s/dashboard.key -h localhost -p %[2]s -i dashboard -t 'fleet/#' -v &\n", svcDir, port)
	fmt.Fprintf(w, "  mosquitto_pub --cafile %[1]s/ca.crt --cert %[1]s/dev1.crt --key %[1]s/dev1.key -h localhost -p %[2]s -i dev1 -t private/dev1/up/hello -m hi\n", devDir, port)
	fmt.Fprintf(w, "The service sees the device's message relayed as fleet/dev1/up/hello.\n")
	fmt.Fprintf(w, "(The client ID (-i) must equal the device ID; a device may only use private/<its id>/#.)\n")
}
