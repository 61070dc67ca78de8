package device

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/otaproto"
)

// OTAState is what the OTA agent keeps between runs. Everything in it is a
// floor for the release policy, so a store must never be restored from an
// older copy: that would let a replayed, validly signed old release in.
type OTAState struct {
	// Version is the firmware the device runs.
	Version firmware.Version
	// SecurityCounter is the running image's security counter. Releases
	// below it are refused.
	SecurityCounter uint32
	// Sequence is the sequence number of the release statement of the
	// running image; 0 when none is known (a factory image).
	Sequence uint64
	// Accepted is the highest statement sequence number the agent has
	// handed to the Installer. It never decreases, and the policy refuses
	// statements at or below it, so each statement is acted on once: an
	// image that the bootloader reverted is not installed again, in a
	// loop, from the same statement.
	Accepted uint64
	// Pending is the release handed to the Installer that the device has
	// not yet been seen running; nil otherwise. Agent.Start and
	// Agent.Booted settle it.
	Pending *OTAPending
}

// OTAPending is a release that was handed to the Installer.
type OTAPending struct {
	Rollout         string           // the rollout that offered it
	SHA256          string           // lowercase hex SHA-256 of the image file
	Version         firmware.Version // from the verified statement
	SecurityCounter uint32           // from the verified statement
	Sequence        uint64           // the statement's sequence number
}

// lastSequence is the policy's floor for statement sequence numbers.
func (s OTAState) lastSequence() uint64 { return max(s.Sequence, s.Accepted) }

// OTAStore keeps the agent's state and the partial download of an image in
// non-volatile storage. The agent uses its store from one goroutine at a
// time; give each store to one agent only.
type OTAStore interface {
	// Load returns the saved state, or the zero OTAState if none was
	// saved yet.
	Load() (OTAState, error)
	// Save durably and atomically replaces the state.
	Save(OTAState) error
	// OpenDownload opens the partial download of the image whose file has
	// SHA-256 sha (64 lowercase hex digits): the bytes received before, if
	// the stored download is of that image, or else an empty download that
	// replaces any other.
	OpenDownload(sha string) (OTADownload, error)
	// RemoveDownload deletes the partial download, if there is one.
	RemoveDownload() error
}

// OTADownload is a partial image download: the first Size bytes of the
// image file, as received.
type OTADownload interface {
	// Size returns how many bytes it holds.
	Size() int64
	// Write appends p.
	Write(p []byte) (int, error)
	// Truncate keeps the first n bytes (0: start over).
	Truncate(n int64) error
	// Sync makes what was written durable, so that a restart resumes
	// from it.
	Sync() error
	// Bytes returns everything it holds.
	Bytes() ([]byte, error)
	// Close releases it. The bytes stay for a later OpenDownload.
	Close() error
}

// FileOTAStore is an OTAStore in a directory: the state in
// <Dir>/ota-state.json (replaced atomically: temporary file, fsync,
// rename, directory fsync), the partial download in <Dir>/download.part
// and the SHA-256 it belongs to in <Dir>/download.sha256. Files are
// created with mode 0600, and Dir (mode 0700) when it does not exist.
type FileOTAStore struct {
	Dir string
}

// File names in a FileOTAStore's directory.
const (
	otaStateFile    = "ota-state.json"
	otaDownloadFile = "download.part"
	otaDownloadSHA  = "download.sha256"
)

// maxOTAStateFile bounds what Load reads: a real state file is under 512
// bytes.
const maxOTAStateFile = 64 << 10

func (s FileOTAStore) path(name string) string { return filepath.Join(s.Dir, name) }

func (s FileOTAStore) mkdir() error {
	if s.Dir == "" {
		return errors.New("FileOTAStore.Dir is empty")
	}
	return os.MkdirAll(s.Dir, 0o700)
}

// Load reads the state; a missing file is the zero state.
func (s FileOTAStore) Load() (OTAState, error) {
	if s.Dir == "" {
		return OTAState{}, errors.New("load OTA state: FileOTAStore.Dir is empty")
	}
	f, err := os.Open(s.path(otaStateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return OTAState{}, nil
	}
	if err != nil {
		return OTAState{}, fmt.Errorf("load OTA state: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxOTAStateFile+1))
	if err != nil {
		return OTAState{}, fmt.Errorf("load OTA state: %w", err)
	}
	st, err := decodeOTAState(b)
	if err != nil {
		return OTAState{}, fmt.Errorf("load OTA state from %s: %w (restore it from the device's provisioning record rather than delete it: it holds the release policy's floors)", s.path(otaStateFile), err)
	}
	return st, nil
}

// Save replaces the state atomically and durably.
func (s FileOTAStore) Save(st OTAState) error {
	b, err := encodeOTAState(st)
	if err != nil {
		return fmt.Errorf("save OTA state: %w", err)
	}
	if err := s.mkdir(); err != nil {
		return fmt.Errorf("save OTA state: %w", err)
	}
	if err := fileutil.WriteFileAtomic(s.path(otaStateFile), b, 0o600); err != nil {
		return fmt.Errorf("save OTA state: %w", err)
	}
	return nil
}

// OpenDownload opens download.part for sha, resuming it if download.sha256
// names sha. Otherwise it removes the old download first, then records sha,
// so that a crash in between never pairs one image's bytes with another's
// hash.
func (s FileOTAStore) OpenDownload(sha string) (OTADownload, error) {
	if !otaproto.ValidSHA256(sha) {
		return nil, fmt.Errorf("open OTA download: %q is not 64 lowercase hex digits", sha)
	}
	if err := s.mkdir(); err != nil {
		return nil, fmt.Errorf("open OTA download: %w", err)
	}
	part := s.path(otaDownloadFile)
	cur, err := os.ReadFile(s.path(otaDownloadSHA))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open OTA download: %w", err)
	}
	if strings.TrimSpace(string(cur)) != sha {
		if err := s.RemoveDownload(); err != nil {
			return nil, fmt.Errorf("open OTA download: %w", err)
		}
		if err := fileutil.WriteFileAtomic(s.path(otaDownloadSHA), []byte(sha+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("open OTA download: %w", err)
		}
	}
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open OTA download: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open OTA download: %w", err)
	}
	return &fileDownload{f: f, size: size}, nil
}

// RemoveDownload deletes download.part and download.sha256.
func (s FileOTAStore) RemoveDownload() error {
	if s.Dir == "" {
		return errors.New("remove OTA download: FileOTAStore.Dir is empty")
	}
	removed := false
	for _, name := range []string{otaDownloadFile, otaDownloadSHA} {
		err := os.Remove(s.path(name))
		switch {
		case err == nil:
			removed = true
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("remove OTA download: %w", err)
		}
	}
	if !removed {
		return nil
	}
	if err := fileutil.SyncDir(s.Dir); err != nil {
		return fmt.Errorf("remove OTA download: %w", err)
	}
	return nil
}

// fileDownload is FileOTAStore's OTADownload. Its file offset is always at
// the end.
type fileDownload struct {
	f    *os.File
	size int64
}

func (d *fileDownload) Size() int64 { return d.size }

func (d *fileDownload) Write(p []byte) (int, error) {
	n, err := d.f.Write(p)
	d.size += int64(n)
	return n, err
}

func (d *fileDownload) Truncate(n int64) error {
	if n < 0 || n > d.size {
		return fmt.Errorf("truncate OTA download of %d bytes to %d", d.size, n)
	}
	if err := d.f.Truncate(n); err != nil {
		return err
	}
	if _, err := d.f.Seek(n, io.SeekStart); err != nil {
		return err
	}
	d.size = n
	return nil
}

func (d *fileDownload) Sync() error { return d.f.Sync() }

func (d *fileDownload) Bytes() ([]byte, error) {
	b := make([]byte, d.size)
	if _, err := d.f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("read OTA download: %w", err)
	}
	return b, nil
}

func (d *fileDownload) Close() error { return d.f.Close() }

// otaStateJSON is the file format of an OTAState. Versions are written as
// firmware.Version.String gives them, so a person can read the file.
type otaStateJSON struct {
	Version         string          `json:"version"`
	SecurityCounter uint32          `json:"security_counter"`
	Sequence        uint64          `json:"sequence"`
	Accepted        uint64          `json:"accepted"`
	Pending         *otaPendingJSON `json:"pending,omitempty"`
}

type otaPendingJSON struct {
	Rollout         string `json:"rollout"`
	SHA256          string `json:"sha256"`
	Version         string `json:"version"`
	SecurityCounter uint32 `json:"security_counter"`
	Sequence        uint64 `json:"sequence"`
}

func encodeOTAState(st OTAState) ([]byte, error) {
	f := otaStateJSON{
		Version:         st.Version.String(),
		SecurityCounter: st.SecurityCounter,
		Sequence:        st.Sequence,
		Accepted:        max(st.Accepted, st.Sequence),
	}
	if p := st.Pending; p != nil {
		if !otaproto.ValidSHA256(p.SHA256) {
			return nil, fmt.Errorf("pending release SHA-256 %q is not 64 lowercase hex digits", p.SHA256)
		}
		f.Pending = &otaPendingJSON{Rollout: p.Rollout, SHA256: p.SHA256, Version: p.Version.String(),
			SecurityCounter: p.SecurityCounter, Sequence: p.Sequence}
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// decodeOTAState parses a state file strictly: one JSON object with known
// fields only and valid versions.
func decodeOTAState(b []byte) (OTAState, error) {
	if len(b) > maxOTAStateFile {
		return OTAState{}, fmt.Errorf("state file of more than %d bytes", maxOTAStateFile)
	}
	var f otaStateJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return OTAState{}, fmt.Errorf("malformed state: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return OTAState{}, errors.New("malformed state: data after the JSON object")
	}
	v, err := firmware.ParseVersion(f.Version)
	if err != nil {
		return OTAState{}, fmt.Errorf("malformed state: %w", err)
	}
	st := OTAState{Version: v, SecurityCounter: f.SecurityCounter, Sequence: f.Sequence, Accepted: max(f.Accepted, f.Sequence)}
	if p := f.Pending; p != nil {
		pv, err := firmware.ParseVersion(p.Version)
		if err != nil {
			return OTAState{}, fmt.Errorf("malformed state: pending release: %w", err)
		}
		if !otaproto.ValidSHA256(p.SHA256) {
			return OTAState{}, errors.New("malformed state: pending release SHA-256 is not 64 lowercase hex digits")
		}
		st.Pending = &OTAPending{Rollout: p.Rollout, SHA256: p.SHA256, Version: pv, SecurityCounter: p.SecurityCounter, Sequence: p.Sequence}
	}
	return st, nil
}
