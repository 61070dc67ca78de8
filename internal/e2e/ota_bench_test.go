package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/internal/wardentest"
	"github.com/warden-iot/warden/otaproto"
)

// otaFleet is a running server with n provisioned devices in one rollout
// of a 1 MiB image.
type otaFleet struct {
	s     *wardentest.Server
	ids   []string
	dir   string
	image []byte
	sha   string
}

func newOTAFleet(b *testing.B, n int) *otaFleet {
	b.Helper()
	s := wardentest.Start(b, b.TempDir(), "--log-level", "warn", "--publish-rate", "1000", "--publish-burst", "1000",
		"--connection-rate", "1000", "--connection-burst", "2000", "--connection-rate-per-source", "0", "--connect-timeout", "30s")
	r := newRelease(b)
	img, st := r.sign(b, "bench", "1.0.0", 1, 1<<20-1024)
	s.MustWarden("fw", "trust", r.pub)
	s.MustWarden("fw", "upload", img, "--statement", st)
	dir := b.TempDir()
	out := s.MustWarden("device", "provision", "--count", strconv.Itoa(n), "--model", "bench", "--out", dir)
	ids := strings.Fields(out)
	if len(ids) != n {
		b.Fatalf("provisioned %d devices, want %d", len(ids), n)
	}
	s.MustWarden("rollout", "create", "--image", sha256File(b, img)[:12], "--timeout", "24h")
	data, _ := os.ReadFile(img)
	return &otaFleet{s: s, ids: ids, dir: dir, image: data, sha: sha256File(b, img)}
}

func (f *otaFleet) creds(id string) wardentest.Creds {
	return wardentest.Creds{ID: id, Cert: filepath.Join(f.dir, id+".crt"), Key: filepath.Join(f.dir, id+".key"), CA: filepath.Join(f.dir, "ca.crt")}
}

// serverCPU is the server process's user+system CPU time.
func (f *otaFleet) serverCPU(b *testing.B) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", f.s.Process().Pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the ")" that ends the command name; utime and stime
	// are fields 14 and 15 of the whole line, in clock ticks (100 Hz).
	rest := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	ut, _ := strconv.ParseInt(rest[11], 10, 64)
	st, _ := strconv.ParseInt(rest[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// each runs fn for every device with a bounded number in flight.
func (f *otaFleet) each(b *testing.B, workers int, fn func(id string) error) {
	b.Helper()
	ch := make(chan string)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var first sync.Once
	for range workers {
		wg.Go(func() {
			for id := range ch {
				if err := fn(id); err != nil {
					failed.Add(1)
					first.Do(func() { b.Errorf("device %s: %v", id, err) })
				}
			}
		})
	}
	for _, id := range f.ids {
		ch <- id
	}
	close(ch)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d devices failed", n)
	}
}

func (f *otaFleet) report(b *testing.B, start time.Time, cpu0 time.Duration) {
	el := time.Since(start)
	cpu := f.serverCPU(b) - cpu0
	n := float64(b.N * len(f.ids))
	b.ReportMetric(n*float64(len(f.image))/el.Seconds()/(1<<20), "MiB/s")
	b.ReportMetric(n/el.Seconds(), "devices/s")
	b.ReportMetric(float64(cpu.Microseconds())/1000/n, "server-cpu-ms/device")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkOTAServeHTTPS: 1,000 devices each check (mutual TLS, a full
// handshake per device) and download a 1 MiB image over HTTPS.
//
//	go test -run '^$' -bench BenchmarkOTAServe -benchtime 1x ./internal/e2e/
func BenchmarkOTAServeHTTPS(b *testing.B) {
	f := newOTAFleet(b, 1000)
	clients := map[string]*http.Client{}
	for _, id := range f.ids {
		cert, pool := f.creds(id).TLS(b)
		clients[id] = &http.Client{Timeout: time.Minute, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13},
		}}
	}
	base := "https://" + f.s.API
	b.ResetTimer()
	cpu0, start := f.serverCPU(b), time.Now()
	for range b.N {
		f.each(b, 50, func(id string) error {
			cl := clients[id]
			defer cl.CloseIdleConnections()
			resp, err := cl.Get(base + otaproto.PathCheck + "?version=0.9.0&security_counter=0")
			if err != nil {
				return err
			}
			var o otaproto.Offer
			err = json.NewDecoder(resp.Body).Decode(&o)
			resp.Body.Close()
			if err != nil || o.URL == "" {
				return fmt.Errorf("check: %d %v", resp.StatusCode, err)
			}
			resp, err = cl.Get(o.URL)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			h := sha256.New()
			if _, err := io.Copy(h, resp.Body); err != nil {
				return err
			}
			if fmt.Sprintf("%x", h.Sum(nil)) != f.sha {
				return fmt.Errorf("downloaded image differs")
			}
			return nil
		})
	}
	b.StopTimer()
	f.report(b, start, cpu0)
}

// BenchmarkOTAServeMQTT: 1,000 devices each connect (mutual TLS), ask
// for their offer and fetch the 1 MiB image in 16 KiB blocks.
func BenchmarkOTAServeMQTT(b *testing.B) {
	f := newOTAFleet(b, 1000)
	b.ResetTimer()
	cpu0, start := f.serverCPU(b), time.Now()
	for range b.N {
		f.each(b, 50, func(id string) error {
			rc, _, err := wardentest.ConnectRaw(b, f.s.MQTTS, f.creds(id), wardentest.RawOpts{Clean: true})
			if err != nil {
				return err
			}
			defer rc.Disconnect(&paho.Disconnect{})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := rc.Client.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "private/" + id + "/ota/#"}}}); err != nil {
				return err
			}
			pub := func(ch string, v any) error {
				body, _ := json.Marshal(v)
				_, err := rc.Client.Publish(ctx, &paho.Publish{Topic: otaproto.Topic(id, ch), QoS: 0, Payload: body})
				return err
			}
			next := func(topic string) (*paho.Publish, error) {
				for {
					select {
					case m := <-rc.Msgs:
						if m.Topic == topic {
							return m, nil
						}
					case <-time.After(10 * time.Second):
						return nil, fmt.Errorf("nothing on %s", topic)
					}
				}
			}
			if err := pub(otaproto.TopicStatus, otaproto.Report{State: otaproto.StateCurrent, Version: "0.9.0"}); err != nil {
				return err
			}
			if _, err := next(otaproto.Topic(id, otaproto.TopicNotify)); err != nil {
				return err
			}
			h := sha256.New()
			for off := 0; off < len(f.image); {
				if err := pub(otaproto.TopicGet, otaproto.BlockRequest{SHA256: f.sha, Offset: int64(off), Length: otaproto.MaxBlockSize}); err != nil {
					return err
				}
				m, err := next(otaproto.Topic(id, otaproto.TopicBlock))
				if err != nil {
					return err
				}
				o, _, data, err := otaproto.ParseBlock(m.Payload)
				if err != nil || o != int64(off) {
					return fmt.Errorf("block at %d: %v (offset %d)", off, err, o)
				}
				h.Write(data)
				off += len(data)
			}
			if fmt.Sprintf("%x", h.Sum(nil)) != f.sha {
				return fmt.Errorf("downloaded image differs")
			}
			return nil
		})
	}
	b.StopTimer()
	f.report(b, start, cpu0)
}
