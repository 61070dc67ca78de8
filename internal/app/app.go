// Package app is Warden's composition root: it builds every component from
// the configuration, in order, and tears them down in reverse.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// ErrNotInitialized means the data directory holds no CA yet.
var ErrNotInitialized = errors.New("the data directory is not initialised")

// Initialized reports whether the data directory already holds a CA.
func Initialized(cfg *config.Config) bool {
	return pki.Exists(cfg.Paths().PKI)
}

// Initialize creates the master key and the CA hierarchy. It refuses to
// touch a directory that already has a CA (pki.ErrExists).
func Initialize(cfg *config.Config, log *slog.Logger) (*pki.Authority, error) {
	p := cfg.Paths()
	if pki.Exists(p.PKI) {
		return nil, fmt.Errorf("%s already holds a CA (%w); refusing to overwrite it", p.PKI, pki.ErrExists)
	}
	if err := os.MkdirAll(p.Data, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", p.Data, err)
	}
	key, created, err := keystore.LoadOrCreateMasterKey(p.MasterKey)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created master key", "path", p.MasterKey)
	}
	ks, err := keystore.New(key)
	if err != nil {
		return nil, err
	}
	ca, err := pki.Init(p.PKI, ks, pki.Options{Hostnames: cfg.Hostnames, CRLURL: CRLURL(cfg)})
	if err != nil {
		return nil, err
	}
	log.Info("created CA", "root", ca.Root().Subject.CommonName, "issuing", ca.Issuing().Subject.CommonName, "dir", p.PKI)
	return ca, nil
}

// CRLURL is the CRL distribution point written into certificates: the HTTP
// listener's /crl, reached under the first configured hostname.
func CRLURL(cfg *config.Config) string {
	host := "localhost"
	if len(cfg.Hostnames) > 0 {
		host = cfg.Hostnames[0]
	}
	port := "8080"
	if _, p, err := net.SplitHostPort(cfg.HTTP.Addr); err == nil && p != "" && p != "0" {
		port = p
	}
	return "http://" + net.JoinHostPort(host, port) + "/crl"
}

// Env is the set of components every local command needs: the keystore,
// the CA, the store and the registry.
type Env struct {
	Config   *config.Config
	Paths    config.Paths
	Log      *slog.Logger
	Keystore *keystore.Keystore
	CA       *pki.Authority
	Store    store.Store
	Registry *registry.Registry
}

// Open loads the components of an initialised data directory.
func Open(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Env, error) {
	p := cfg.Paths()
	if !pki.Exists(p.PKI) {
		return nil, fmt.Errorf("%w: %s has no CA; run `warden init --data %s` (or `warden serve`, which initialises on first run)", ErrNotInitialized, p.Data, p.Data)
	}
	key, err := keystore.LoadMasterKey(p.MasterKey)
	if err != nil {
		return nil, err
	}
	ks, err := keystore.New(key)
	if err != nil {
		return nil, err
	}
	ca, err := pki.Load(p.PKI, ks, time.Now)
	if err != nil {
		return nil, err
	}
	st, err := sqlite.Open(ctx, p.RegistryDB)
	if err != nil {
		return nil, err
	}
	reg := registry.New(st, ca, registry.Options{
		Logger:              log.With("component", "registry"),
		DeviceCertLifetime:  cfg.Devices.DeviceCertLifetime(),
		ServiceCertLifetime: cfg.Devices.ServiceLifetime(),
		Sealer:              ks,
	})
	return &Env{Config: cfg, Paths: p, Log: log, Keystore: ks, CA: ca, Store: st, Registry: reg}, nil
}

// Close releases the store.
func (e *Env) Close() error {
	if e == nil || e.Store == nil {
		return nil
	}
	return e.Store.Close()
}

// RootCertPath is where `warden ca export-root` reads from.
func RootCertPath(cfg *config.Config) string {
	return filepath.Join(cfg.Paths().PKI, "root.crt")
}
