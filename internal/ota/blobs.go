package ota

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/otaproto"
)

// Blobs keeps image files by their SHA-256. A blob becomes visible under
// its name only once complete and durable, so a reader never sees a torn
// image; whether Warden offers it is decided by the store row, written
// after the blob.
type Blobs interface {
	// Put stores data under sha (which the caller has checked is its
	// SHA-256). Putting a blob that exists changes nothing.
	Put(ctx context.Context, sha string, data []byte) (created bool, err error)
	// Open returns the blob for reading and its size; fs.ErrNotExist if
	// there is none.
	Open(sha string) (Blob, error)
	// Remove deletes a blob; removing a missing blob is not an error.
	Remove(sha string) error
	// Sweep removes blobs that keep does not claim and that are older than
	// minAge, and leftover temporary files; it returns what it removed.
	Sweep(ctx context.Context, keep func(sha string) (bool, error), minAge time.Duration) ([]string, error)
}

// Blob is an open image file.
type Blob interface {
	io.ReaderAt
	io.ReadSeeker
	io.Closer
	Size() int64
}

// FileBlobs is Blobs in a local directory: <dir>/<sha256>.img, mode 0600.
type FileBlobs struct {
	Dir string
}

const blobSuffix = ".img"

func (b FileBlobs) path(sha string) (string, error) {
	if !otaproto.ValidSHA256(sha) {
		return "", fmt.Errorf("image store: %q is not a SHA-256 in lowercase hex", sha)
	}
	return filepath.Join(b.Dir, sha+blobSuffix), nil
}

// Put implements Blobs.
func (b FileBlobs) Put(ctx context.Context, sha string, data []byte) (bool, error) {
	p, err := b.path(sha)
	if err != nil {
		return false, err
	}
	if got := sha256.Sum256(data); hex.EncodeToString(got[:]) != sha {
		return false, fmt.Errorf("image store: content does not hash to %s", sha)
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := os.MkdirAll(b.Dir, 0o700); err != nil {
		return false, fmt.Errorf("image store: create %s: %w", b.Dir, err)
	}
	err = fileutil.WriteNewFileAtomic(p, data, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Same name, so same hash; a torn file cannot exist under the
		// name, but check the size in case the file was tampered with.
		st, serr := os.Stat(p)
		if serr == nil && st.Size() == int64(len(data)) {
			return false, nil
		}
		return false, fmt.Errorf("image store: %s exists with the wrong size; remove it and upload again", p)
	}
	if err != nil {
		return false, fmt.Errorf("image store: %w (check free space and permissions)", err)
	}
	return true, nil
}

type fileBlob struct {
	*os.File
	size int64
}

func (f fileBlob) Size() int64 { return f.size }

// Open implements Blobs.
func (b FileBlobs) Open(sha string) (Blob, error) {
	p, err := b.path(sha)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("image store: %w", err)
	}
	return fileBlob{File: f, size: st.Size()}, nil
}

// Remove implements Blobs.
func (b FileBlobs) Remove(sha string) error {
	p, err := b.path(sha)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("image store: %w", err)
	}
	return fileutil.SyncDir(b.Dir)
}

// Sweep implements Blobs.
func (b FileBlobs) Sweep(ctx context.Context, keep func(sha string) (bool, error), minAge time.Duration) ([]string, error) {
	entries, err := os.ReadDir(b.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	var removed []string
	cutoff := time.Now().Add(-minAge)
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || info.ModTime().After(cutoff) {
			continue
		}
		name := e.Name()
		sha, isBlob := strings.CutSuffix(name, blobSuffix)
		if isBlob && otaproto.ValidSHA256(sha) {
			k, err := keep(sha)
			if err != nil {
				return removed, err
			}
			if k {
				continue
			}
		} else if !strings.HasPrefix(name, ".") {
			continue // not ours: leave it
		}
		// An orphan blob (a crash between the blob and its row) or a
		// temporary file of an interrupted write.
		if err := os.Remove(filepath.Join(b.Dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("image store: %w", err)
		}
		removed = append(removed, name)
	}
	if len(removed) > 0 {
		if err := fileutil.SyncDir(b.Dir); err != nil {
			return removed, err
		}
	}
	return removed, nil
}
