package app

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/warden-iot/warden/commandproto"
	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/api"
	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/command"
	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/monitor"
	"github.com/warden-iot/warden/internal/onboard"
	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/policy"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/relay"
	"github.com/warden-iot/warden/internal/rotation"
	"github.com/warden-iot/warden/internal/sealing"
	"github.com/warden-iot/warden/internal/stream"
)

// Server is a running `warden serve`.
type Server struct {
	Env     *Env
	Broker  *broker.Broker
	OTA     *ota.Service
	Onboard *onboard.Service
	Tokens  *apitoken.Service
	// Rotation runs CA rotations (`warden ca rotate`).
	Rotation *rotation.Manager
	// Monitor is the anomaly monitor.
	Monitor *monitor.Monitor

	audit *audit.Log
	// rec is what components record to: audit in front of which a
	// Limiter bounds each action's refusals (audit.Limiter).
	rec      *audit.Limiter
	httpSrv  *http.Server
	httpLn   net.Listener
	apiSrv   *http.Server
	apiLn    net.Listener
	adminSrv *http.Server
	adminLn  net.Listener
	unsub    func()
	stop     context.CancelFunc
	seal     *sealing.Sealing
	bgDone   chan struct{}
}

// BrokerLimits converts configured limits to the broker's.
func BrokerLimits(l config.Limits) broker.Limits {
	return broker.Limits{
		ConnectTimeout:          l.ConnectTimeout,
		MaxPacketSize:           uint32(l.MaxPacketSize),
		ClientSendQueue:         l.ClientSendQueue,
		MaxInflight:             l.MaxInflight,
		ServiceSendQueue:        l.ServiceSendQueue,
		ServiceMaxInflight:      l.ServiceMaxInflight,
		HandshakeConcurrency:    l.HandshakeConcurrency,
		MaxKeepAlive:            l.MaxKeepAlive,
		PublishRate:             l.PublishRate,
		PublishBurst:            l.PublishBurst,
		ConnectionRate:          l.ConnectionRate,
		ConnectionBurst:         l.ConnectionBurst,
		ConnectionRatePerSource: l.ConnectionRatePerSource,
		FlapMaxConnects:         l.FlapMaxConnects,
		FlapWindow:              l.FlapWindow,
		FlapBan:                 l.FlapBan,
		MaxSessionExpiry:        l.MaxSessionExpiry,
	}
}

// Start initialises the data directory if needed, then starts the broker,
// the HTTP listener and the admin socket. Stop it with Close.
func Start(ctx context.Context, cfg *config.Config, log *slog.Logger) (srv *Server, err error) {
	if !Initialized(cfg) {
		if _, err := Initialize(cfg, log); err != nil {
			return nil, err
		}
	}
	env, err := Open(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	s := &Server{Env: env}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	p := env.Paths

	if s.audit, err = audit.Open(p.AuditLog, log); err != nil {
		return nil, err
	}
	s.rec = audit.NewLimiter(s.audit, audit.LimiterOptions{})
	if _, err := refreshCRLIfDue(ctx, env.CA, env.Registry, time.Now()); err != nil {
		return nil, err
	}
	if err := ensureServerCertificate(env.CA, cfg.Hostnames, time.Now(), log); err != nil {
		return nil, err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	pol, err := policy.New(policy.DefaultRules())
	if err != nil {
		return nil, err
	}
	serverCert, err := env.CA.ServerCertificate()
	if err != nil {
		return nil, err
	}
	listeners := []broker.ListenerConfig{{Name: "mqtts", Kind: broker.KindMQTTS, Addr: cfg.MQTTS.Addr, TLSProfile: cfg.MQTTS.TLSProfile}}
	if cfg.WSS.Addr != "" {
		listeners = append(listeners, broker.ListenerConfig{Name: "wss", Kind: broker.KindWSS, Addr: cfg.WSS.Addr, TLSProfile: cfg.WSS.TLSProfile, Path: cfg.WSS.Path})
	}
	if cfg.MQTT.Addr != "" {
		listeners = append(listeners, broker.ListenerConfig{Name: "mqtt", Kind: broker.KindMQTT, Addr: cfg.MQTT.Addr})
	}
	seal := sealing.New(env.Registry, log.With("component", "sealing"), s.rec, reg)
	if err := seal.OpenJournal(ctx, filepath.Join(p.Data, "replay.journal")); err != nil {
		return nil, err
	}
	s.seal = seal
	hub := stream.NewHub(reg)
	resp := &responder{}
	fwPolicy := &firmwarePolicy{}
	webhook, err := monitor.NewWebhook(cfg.Monitor.Webhook)
	if err != nil {
		return nil, err
	}
	if s.Monitor, err = monitor.New(ctx, monitor.Options{
		Store: env.Store, Config: cfg.Monitor, Responder: resp, Webhook: webhook, Audit: s.rec,
		Logger: log.With("component", "monitor"), Registerer: reg, Certificates: env.Store, Firmware: fwPolicy,
	}); err != nil {
		return nil, err
	}
	seal.Events = s.Monitor
	s.Broker, err = broker.New(broker.Options{
		Events:            events.Multi{hub, s.Monitor},
		Logger:            log.With("component", "broker"),
		Audit:             s.rec,
		Registerer:        reg,
		Authenticator:     env.Registry,
		Claims:            env.Registry,
		Passwords:         seal,
		Policy:            pol,
		ServerCertificate: serverCert,
		ClientCAs:         env.CA.ClientCAs(),
		Trust:             env.CA,
		HybridPQ:          cfg.TLS.HybridPQ,
		Listeners:         listeners,
		Limits:            BrokerLimits(cfg.Limits),
		StoragePath:       p.BrokerDB,
	})
	if err != nil {
		return nil, err
	}
	resp.b = s.Broker
	s.Broker.SetQuarantine(s.Monitor)
	rel := relay.New(s.Broker, env.Registry, seal, log.With("component", "relay"), s.rec, reg)
	cmds, err := command.New(command.Options{Sender: rel, Presence: s.Broker, Devices: env.Registry,
		Audit: s.rec, Logger: log.With("component", "command"), Registerer: reg})
	if err != nil {
		return nil, err
	}
	rel.Tap(commandproto.ChannelResult, cmds.Result)
	rel.TapAll(hub.Uplink)

	// Firmware: the HTTPS listener is bound first because offers carry
	// download URLs that name its port.
	var urls *ota.URLSigner
	var imageURL func(deviceID, sha string) string
	if cfg.API.Addr != "" {
		if s.apiLn, err = net.Listen("tcp", cfg.API.Addr); err != nil {
			return nil, fmt.Errorf("api listener: listen on %s: %w", cfg.API.Addr, err)
		}
		urls = ota.NewURLSigner(publicBase(cfg.OTA.PublicURL, cfg.Hostnames, s.apiLn.Addr()))
		imageURL = urls.URL
	}
	if s.OTA, err = env.OpenOTA(s.rec, reg, imageURL, func(o *ota.Options) {
		o.Events, o.Alerter = s.Monitor, otaAlerts{s.Monitor}
	}); err != nil {
		return nil, err
	}
	fwPolicy.o = s.OTA
	if err := s.OTA.Sweep(ctx); err != nil {
		log.Warn("could not sweep orphaned firmware files", "error", err)
	}
	otaMQTT := ota.NewMQTT(s.OTA, s.Broker, seal, reg)
	if s.Onboard, err = env.OpenOnboard(s.rec, reg); err != nil {
		return nil, err
	}
	s.Tokens = env.OpenTokens(s.rec)
	onboardMQTT := s.Onboard.NewMQTT(s.Broker, seal)
	s.Broker.SetRouter(router{ota: otaMQTT, onboard: onboardMQTT, relay: rel})
	if s.Rotation, err = env.OpenRotation(s.rec, reg, s.Broker); err != nil {
		return nil, err
	}
	s.Broker.SetObserver(s.Rotation)
	otaHTTP := ota.NewHTTPMetrics(reg)
	rekey := rekeyWith(env.Registry, rel)
	seal.OnRekeyDue = func(id string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if epoch, err := rekey(ctx, id); err != nil {
			log.Error("automatic rekey failed; run `warden device rekey` for the device", "device", id, "error", err)
		} else {
			log.Info("automatic rekey sent", "device", id, "epoch", epoch)
		}
	}

	// Revocation and disabling act on live connections at once. The
	// subscriber runs under the registry's lock: it must not block or call
	// back into the registry, so anything more goes to a goroutine.
	s.unsub = env.Registry.Subscribe(func(e registry.Event) {
		if e.Principal.Kind == identity.KindDevice {
			seal.Invalidate(e.Principal.ID)
		}

		switch e.Kind {
		case registry.EventDeviceRevoked, registry.EventServiceRevoked:
			go s.Broker.Cut(e.Principal, "revoked", true)
		case registry.EventDeviceDisabled:
			go s.Broker.Cut(e.Principal, "disabled", false)
		case registry.EventDeviceRecovered:
			// Its earlier certificates were revoked: a session still open
			// with one of them (a device that lost its key) must go.
			go s.Broker.Cut(e.Principal, "recovered", false)
		}
		if e.Kind != registry.EventDeviceAdded && e.Kind != registry.EventServiceAdded {
			s.rec.Record(context.Background(), audit.Event{
				Action: "registry." + string(e.Kind), Outcome: "done", Actor: "operator", Subject: e.Principal.String(), Reason: e.Reason,
			})
		}
	})

	if err := s.Broker.Start(ctx); err != nil {
		return nil, err
	}

	if cfg.HTTP.Addr != "" {
		if s.httpLn, err = net.Listen("tcp", cfg.HTTP.Addr); err != nil {
			return nil, fmt.Errorf("http listener: listen on %s: %w", cfg.HTTP.Addr, err)
		}
		// Devices without TLS (envelope devices) check and report here with
		// sealed requests and download with the capability in their offer.
		ops := s.opsHandler(reg, cfg.HTTP.Pprof)
		sealedOTA := s.OTA.HTTPHandler(ota.HTTPOptions{Opener: httpOpener{seal}, URLs: urls, Metrics: otaHTTP, Name: "http"})
		mux := http.NewServeMux()
		mux.Handle("/ota/", sealedOTA)
		mux.Handle("/", ops)
		s.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = s.httpSrv.Serve(s.httpLn) }()
		log.Info("listening", "listener", "http", "addr", s.httpLn.Addr().String())
	}

	adm := admin.Local{Registry: env.Registry, OTA: s.OTA, RekeyFunc: rekey, Rotation: s.Rotation}
	// One API, two doors: the HTTPS listener (API tokens) and the admin
	// socket, through which the CLI acts on this server.
	ops, err := api.New(api.Options{
		Tokens: s.Tokens, Admin: adm, Presence: s.Broker, Issuers: env.CA, Commands: cmds, Streams: hub, Firmware: env.Store,
		AuditLog: p.AuditLog, Alerts: s.Monitor, Seen: s.Monitor,
		Onboarding: s.Onboard, Claims: env.Registry, Enrollments: env.Store, TokenAdmin: s.Tokens, Quarantines: s.Monitor,
		Audit: s.rec, Logger: log.With("component", "api"), Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	if s.apiLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/ota/", s.OTA.HTTPHandler(ota.HTTPOptions{Auth: env.Registry, Opener: httpOpener{seal}, URLs: urls, Metrics: otaHTTP, Name: "api"}))
		onb := s.Onboard.Handler(onboard.HTTPOptions{Tokens: s.Tokens, TokenHeader: apitoken.FromRequest})
		mux.Handle("/.well-known/est/", onb)
		mux.Handle("/v1/", ops.Handler())
		// Claim tokens are minted with an API token: the same throttle on
		// failed tokens per address applies.
		mux.Handle(onboard.PathClaims, ops.Guard("POST "+onboard.PathClaims, onb))
		var h http.Handler = mux
		if err := s.startAPI(cfg.API.TLSProfile, cfg.TLS.HybridPQ, serverCert, h); err != nil {
			return nil, err
		}
	}

	if s.adminLn, err = admin.Listen(p.AdminSocket); err != nil {
		return nil, err
	}
	mctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.bgDone = make(chan struct{})
	go s.maintain(mctx)
	otaDone := make(chan struct{})
	go func() { defer close(otaDone); s.OTA.Run(mctx, 5*time.Second) }()
	monDone := make(chan struct{})
	go func() {
		defer close(monDone)
		if err := s.Monitor.Run(mctx); err != nil && mctx.Err() == nil {
			log.Error("the anomaly monitor stopped", "error", err)
		}
	}()
	rotDone := make(chan struct{})
	go func() { defer close(rotDone); s.Rotation.Run(mctx) }()
	go func() { defer close(s.bgDone); seal.Run(mctx, 30*time.Second); <-otaDone; <-rotDone; <-monDone }()

	s.adminSrv = &http.Server{Handler: ops.LocalHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.adminSrv.Serve(s.adminLn) }()
	return s, nil
}

// rekey starts (or repeats) a device's move to a new envelope epoch and
// sends it the new secret, sealed under the current one.
func rekeyWith(reg *registry.Registry, rel *relay.Relay) func(ctx context.Context, id string) (uint32, error) {
	return func(ctx context.Context, id string) (uint32, error) {
		pol, err := reg.EnvelopePolicy(ctx, id)
		if err != nil {
			return 0, err
		}
		if pol.MinSuite == envelope.SignP256.String() {
			return 0, fmt.Errorf("device %s signs with its certificate key (sign-p256): it has no envelope secret to rekey; renew its certificate instead: %w", id, registry.ErrInvalid)
		}
		pending, err := reg.BeginRekey(ctx, id)
		if err != nil {
			return 0, err
		}
		defer clear(pending.Secret)
		if err := rel.SendRekey(ctx, id, pending); err != nil {
			return 0, fmt.Errorf("%w; the new key is pending: run `warden device rekey %s` again to resend it", err, id)
		}
		return pending.Epoch, nil
	}
}

// HTTPAddr is the bound address of the HTTP listener (nil when off).
func (s *Server) HTTPAddr() net.Addr {
	if s.httpLn == nil {
		return nil
	}
	return s.httpLn.Addr()
}

func (s *Server) opsHandler(reg *prometheus.Registry, profiles bool) http.Handler {
	mux := http.NewServeMux()
	if profiles {
		// Validation allows this only on a loopback listener.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	serveCRL := func(w http.ResponseWriter, asPEM bool) {
		der, err := s.Env.CA.CurrentCRL()
		if err != nil {
			http.Error(w, "CRL unavailable", http.StatusServiceUnavailable)
			return
		}
		if asPEM {
			w.Header().Set("Content-Type", "application/x-pem-file")
			_ = pem.Encode(w, &pem.Block{Type: "X509 CRL", Bytes: der})
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		_, _ = w.Write(der)
	}
	mux.HandleFunc("GET /crl", func(w http.ResponseWriter, r *http.Request) { serveCRL(w, false) })
	mux.HandleFunc("GET /crl.pem", func(w http.ResponseWriter, r *http.Request) { serveCRL(w, true) })
	return mux
}

// Close stops everything in reverse order of start.
func (s *Server) Close() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.adminSrv != nil {
		errs = append(errs, ignoreClosed(s.adminSrv.Shutdown(ctx)))
	} else if s.adminLn != nil {
		errs = append(errs, ignoreClosed(s.adminLn.Close()))
	}
	if s.apiSrv != nil {
		errs = append(errs, ignoreClosed(s.apiSrv.Shutdown(ctx)))
	} else if s.apiLn != nil {
		errs = append(errs, ignoreClosed(s.apiLn.Close()))
	}
	if s.httpSrv != nil {
		errs = append(errs, ignoreClosed(s.httpSrv.Shutdown(ctx)))
	} else if s.httpLn != nil {
		errs = append(errs, ignoreClosed(s.httpLn.Close()))
	}
	if s.unsub != nil {
		s.unsub()
	}
	if s.Broker != nil {
		errs = append(errs, s.Broker.Close())
	}
	// With no more uplinks coming, fold the replay journal one last time.
	if s.stop != nil {
		s.stop()
		<-s.bgDone
	}
	if s.OTA != nil {
		errs = append(errs, s.OTA.Close())
	}
	if s.seal != nil {
		errs = append(errs, s.seal.CloseJournal())
	}
	if s.rec != nil {
		s.rec.Close() // its last summary, before the log closes
	}
	if s.audit != nil {
		errs = append(errs, s.audit.Close())
	}
	errs = append(errs, s.Env.Close())
	return errors.Join(errs...)
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
