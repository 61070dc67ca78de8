package faults

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/wardentest"
	"github.com/warden-iot/warden/otaproto"
)

// uploadSize is the killed uploads' image size: large enough that reading
// and storing it take a while (the default limit is 64 MiB).
func uploadSize() int { return scaled(40<<20, 16<<20) }

// Threat: a crash while a firmware image streams in, or while the server
// stores it, leaves a torn image that is listed, offered in a rollout or
// served to devices, or blocks the upload from being retried.
//
// Control: internal/ota Service.upload reads and verifies the whole image
// against its signed statement before storing anything; FileBlobs.Put
// (internal/ota/blobs.go) writes a temporary file, fsyncs and links it
// into place under its SHA-256, and only then is the store row written
// (PutFirmwareImage), which is what lists and offers an image; a blob
// without a row is swept (Service.Sweep). The API takes the image on
// POST /v1/firmware/images (internal/api uploadImage).
//
// Kill points: the server killed mid-transfer over HTTPS with an API
// token (after more than half the body was consumed), the server killed
// while it writes the blob (the temporary file appearing in
// data/firmware), and the CLI (`warden fw upload`, through the admin
// socket) killed mid-transfer while the server runs on, which must refuse
// the truncated body (audit firmware.upload denied, metric
// warden_ota_uploads_total{outcome="error"}).
//
// After each: no row, nothing listed, no blob under the image's name
// unless it is complete, no rollout can be made of it; the upload is
// retried and the stored image is served byte for byte to a device of a
// rollout.
func TestKillDuringFirmwareUpload(t *testing.T) {
	t.Parallel()
	n := startNode(t)
	rel := newRelease(t, n)
	admin := n.token("admin")

	// A first image, so that data/firmware exists to be watched.
	small, smallSt, _ := rel.sign(t, "fault-fw", "0.1.0", 1, 4096)
	n.mustCLI("fw", "upload", small, "--statement", smallSt)
	devDir := t.TempDir()
	n.mustCLI("device", "add", "fw-dev", "--model", "fault-fw", "--out", devDir)
	dev := creds(devDir, "fw-dev")
	n.secrets.AddCredentialDir(t, devDir)
	fwDir := filepath.Join(n.Data, "firmware")

	for i, kp := range []string{"server-killed-mid-transfer-over-https", "server-killed-while-storing-the-blob", "cli-killed-mid-transfer"} {
		t.Run(kp, func(t *testing.T) {
			img, stPath, sha := rel.sign(t, "fault-fw", "1.0."+string(rune('0'+i)), 2+i, uploadSize())
			data, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			statement, err := os.ReadFile(stPath)
			if err != nil {
				t.Fatal(err)
			}
			uploadsErr := n.Metric(t, "warden_ota_uploads_total", `outcome="error"`)

			switch kp {
			case "server-killed-mid-transfer-over-https":
				pr, pw := io.Pipe()
				req, err := http.NewRequest(http.MethodPost, "https://"+n.API+"/v1/firmware/images", pr)
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Authorization", "Bearer "+admin)
				req.Header.Set("Content-Type", "application/octet-stream")
				req.Header.Set("X-Warden-Statement", base64.StdEncoding.EncodeToString(statement))
				req.ContentLength = int64(len(data))
				var local atomic.Value
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
					GotConn: func(ci httptrace.GotConnInfo) { local.Store(ci.Conn.LocalAddr().String()) },
				}))
				done := make(chan error, 1)
				go func() {
					resp, err := apiClient(t, n.Data, nil).Do(req)
					if err == nil {
						err = errors.New("the upload finished: " + resp.Status + " " + string(readAll(resp.Body)))
					}
					done <- err
				}()
				// Write until the server has read a quarter of the image:
				// what was handed to the connection minus what the two
				// sockets still hold (/proc/net/tcp). Without /proc, 60%
				// written is past a quarter read on loopback.
				written, read := 0, -1
				for written < len(data)*9/10 {
					m, err := pw.Write(data[written : written+1<<20])
					if err != nil {
						t.Fatalf("upload body after %d bytes: %v", written, err)
					}
					written += m
					if l, ok := local.Load().(string); ok {
						if q, ok := tcpQueued(l, n.API); ok {
							read = written - q
						}
					}
					if read >= len(data)/4 || (read < 0 && written >= len(data)*6/10) {
						break
					}
				}
				if read >= 0 && read < len(data)/4 {
					t.Fatalf("the server read only %d bytes of %d", read, len(data))
				}
				n.kill()
				pw.CloseWithError(errors.New("server killed"))
				t.Logf("killed the server with %d of %d bytes handed to the connection, %d of them read by the server (-1: unknown); client: %v", written, len(data), read, <-done)
				n.restart()

			case "server-killed-while-storing-the-blob":
				created := watchDir(t, fwDir, false)
				done := make(chan error, 1)
				go func() {
					req, _ := http.NewRequest(http.MethodPost, "http://warden/v1/firmware/images", bytes.NewReader(data))
					req.Header.Set("Content-Type", "application/octet-stream")
					req.Header.Set("X-Warden-Statement", base64.StdEncoding.EncodeToString(statement))
					resp, err := socketClient(n.Data).Do(req)
					if err == nil {
						err = errors.New("the upload finished: " + resp.Status)
						resp.Body.Close()
					}
					done <- err
				}()
				timeout := time.After(time.Minute)
			wait:
				for {
					select {
					case name := <-created:
						if strings.HasPrefix(name, "."+sha+".img.tmp-") {
							n.kill()
							t.Logf("killed the server as it created %s", name)
							break wait
						}
					case err := <-done:
						t.Fatalf("the upload ended before its blob was written: %v", err)
					case <-timeout:
						t.Fatal("the blob's temporary file never appeared")
					}
				}
				t.Logf("client: %v", <-done)
				n.restart()

			case "cli-killed-mid-transfer":
				fifo := filepath.Join(t.TempDir(), "upload.img")
				if err := syscall.Mkfifo(fifo, 0o600); err != nil {
					t.Fatal(err)
				}
				p := n.startCLI("fw", "upload", fifo, "--statement", stPath)
				w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				// A FIFO write returns once the CLI read all but a pipe
				// buffer (64 KiB) of it, and the CLI forwards what it read
				// to the server before it reads more.
				if _, err := w.Write(data[:len(data)/2]); err != nil {
					t.Fatal(err)
				}
				p.kill()
				w.Close()
				_, err = p.wait(t)
				t.Logf("killed the CLI after it read half the image: %v", err)
				// The server, still running, refuses the truncated body.
				wardentest.Eventually(t, 10*time.Second, "the refused upload in the audit log", func() bool {
					return n.AuditContains(`"action":"firmware.upload"`, `"outcome":"denied"`)
				})
				if got := n.Metric(t, "warden_ota_uploads_total", `outcome="error"`); got != uploadsErr+1 {
					t.Errorf(`warden_ota_uploads_total{outcome="error"} = %v, want %v`, got, uploadsErr+1)
				}
			}

			checkNoPartialImage(t, n, fwDir, sha)

			// The upload can be retried, and the image is then stored,
			// listed once and served whole.
			stored := n.Metric(t, "warden_ota_uploads_total", `outcome="stored"`)
			out := n.mustCLI("fw", "upload", img, "--statement", stPath)
			if !strings.Contains(out, sha) {
				t.Fatalf("retried upload: %s", out)
			}
			if got := n.Metric(t, "warden_ota_uploads_total", `outcome="stored"`); got != stored+1 {
				t.Errorf(`warden_ota_uploads_total{outcome="stored"} = %v after the retry, want %v`, got, stored+1)
			}
			if !n.AuditContains(`"action":"firmware.upload"`, `"outcome":"done"`, `"subject":"image:`+sha+`"`) {
				t.Error("the retried upload is not in the audit log")
			}
			checkServed(t, n, dev, fwDir, sha, data)
		})
	}
	n.checkAtRest()
}

// checkNoPartialImage checks that nothing of the image sha is listed,
// stored as a row, offerable, or under its name unless complete.
func checkNoPartialImage(t *testing.T, n *node, fwDir, sha string) {
	t.Helper()
	st := wardentest.OpenStore(t, n.Data)
	if _, err := st.GetFirmwareImage(context.Background(), sha); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PARTIAL IMAGE: the killed upload has a store row (%v)", err)
	}
	if out := n.mustCLI("fw", "list", "--json"); strings.Contains(out, sha) {
		t.Errorf("PARTIAL IMAGE: the killed upload is listed:\n%s", out)
	}
	if _, errOut, err := n.cli("rollout", "create", "--image", sha, "--stages", "100%"); err == nil {
		t.Errorf("PARTIAL IMAGE: a rollout of the killed upload was created")
	} else {
		t.Logf("rollout of the killed upload refused: %s", firstLine(errOut))
	}
	entries, err := os.ReadDir(fwDir)
	if err != nil {
		t.Fatal(err)
	}
	temps := 0
	for _, e := range entries {
		switch name := e.Name(); {
		case name == sha+".img":
			b, err := os.ReadFile(filepath.Join(fwDir, name))
			if err != nil {
				t.Fatal(err)
			}
			if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != sha {
				t.Errorf("TORN IMAGE: %s is under its final name with %d bytes that do not hash to it", name, len(b))
			} else {
				t.Logf("a complete blob without a row is left for the sweep: %s", name)
			}
		case strings.HasPrefix(name, "."):
			temps++
		}
	}
	if temps > 0 {
		t.Logf("%d temporary files of interrupted writes in data/firmware (swept once an hour old)", temps)
	}
}

// checkServed checks that the image sha is stored whole, listed once, and
// downloaded byte for byte by a device of a rollout of it.
func checkServed(t *testing.T, n *node, dev wardentest.Creds, fwDir, sha string, want []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fwDir, sha+".img"))
	if err != nil || !bytes.Equal(b, want) {
		t.Fatalf("the stored blob differs from the image (%v)", err)
	}
	var imgs []store.FirmwareImage
	if err := json.Unmarshal([]byte(n.mustCLI("fw", "list", "--json")), &imgs); err != nil {
		t.Fatal(err)
	}
	listed := 0
	for _, im := range imgs {
		if im.SHA256 == sha {
			listed++
		}
	}
	if listed != 1 {
		t.Fatalf("image listed %d times", listed)
	}
	// Abort whatever rollout the device is in, then offer this image.
	rs, err := wardentest.OpenStore(t, n.Data).ListRollouts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.State == store.RolloutRunning || r.State == store.RolloutPaused {
			n.mustCLI("rollout", "abort", r.ID, "--reason", "next image")
		}
	}
	n.mustCLI("rollout", "create", "--image", sha, "--stages", "100%")
	cert, _ := dev.TLS(t)
	cl := apiClient(t, n.Data, &cert)
	resp, err := cl.Get("https://" + n.API + otaproto.PathCheck + "?version=0.0.1&security_counter=0")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(resp.Body)
	var offer otaproto.Offer
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &offer) != nil || offer.SHA256 != sha {
		t.Fatalf("check: %s %s", resp.Status, body)
	}
	resp, err = cl.Get(offer.URL)
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, want) {
		t.Fatalf("download: %s, %d bytes, equal %v", resp.Status, len(got), bytes.Equal(got, want))
	}
}
