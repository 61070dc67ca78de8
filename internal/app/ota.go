package app

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/ota"
)

// OpenOTA builds the firmware service on the environment's store. imageURL
// may be nil (no HTTPS delivery, e.g. in local CLI commands).
func (e *Env) OpenOTA(rec audit.Recorder, reg prometheus.Registerer, imageURL func(deviceID, sha string) string, tune ...func(*ota.Options)) (*ota.Service, error) {
	o := ota.Options{
		Store:        e.Store,
		Blobs:        ota.FileBlobs{Dir: e.Paths.Firmware},
		Logger:       e.Log.With("component", "ota"),
		Audit:        rec,
		Registerer:   reg,
		MaxImageSize: int64(e.Config.OTA.MaxImageSize),
		ImageURL:     imageURL,
	}
	for _, t := range tune {
		t(&o)
	}
	return ota.New(o)
}

// publicBase is the URL prefix devices download images from.
func publicBase(cfgURL string, hostnames []string, apiAddr net.Addr) string {
	if cfgURL != "" {
		return strings.TrimSuffix(cfgURL, "/")
	}
	host := "localhost"
	if len(hostnames) > 0 {
		host = hostnames[0]
	}
	_, port, _ := net.SplitHostPort(apiAddr.String())
	return "https://" + net.JoinHostPort(host, port)
}

// startAPI starts the HTTPS listener: OTA endpoints for devices with a
// client certificate (optional at the TLS layer, required by the handlers
// that need it, so the operator API can share the port).
func (s *Server) startAPI(profile string, hybridPQ bool, cert tls.Certificate, h http.Handler) error {
	tlsCfg, err := broker.ServerTLSConfig(cert, s.Env.CA.ClientCAs(), profile, hybridPQ)
	if err != nil {
		return err
	}
	tlsCfg.ClientAuth = tls.VerifyClientCertIfGiven
	tlsCfg.NextProtos = []string{"h2", "http/1.1"}
	tlsCfg = broker.FollowTrust(tlsCfg, s.Env.CA)
	s.apiSrv = &http.Server{
		Handler:           h,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		// Request bodies are small (CSRs, JSON of at most 64 KiB): a peer
		// that trickles one must not hold a handler.
		ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(s.Env.Log.With("listener", "api").Handler(), slog.LevelDebug),
	}
	// The broker's front door does the TLS handshakes: rate limit,
	// admission, and failed handshakes counted and audited like the MQTT
	// listeners' (net/http would only log them at debug).
	ln := s.Broker.GuardHTTPS(s.apiLn, "api", tlsCfg)
	go func() { _ = s.apiSrv.Serve(ln) }()
	s.Env.Log.Info("listening", "listener", "api", "addr", s.apiLn.Addr().String())
	return nil
}

// APIAddr is the bound address of the HTTPS listener (nil when off).
func (s *Server) APIAddr() net.Addr {
	if s.apiLn == nil {
		return nil
	}
	return s.apiLn.Addr()
}
