package pki

import (
	"io/fs"
	"path/filepath"

	"github.com/warden-iot/warden/internal/fileutil"
)

// File names inside the authority directory.
const (
	fileRoot         = "root.crt"
	fileRootKey      = "root.key.sealed"
	fileIssuing      = "issuing.crt"
	fileIssuingKey   = "issuing.key.sealed"
	fileServer       = "server.crt"
	fileServerKey    = "server.key.sealed"
	fileAuthority    = "authority.json"
	fileCRLDER       = "crl.der"
	fileCRLPEM       = "crl.pem"
	dirIssuers       = "issuers" // certificates of issuing CAs other than the current one
	filePermPublic   = 0o644
	filePermSecret   = 0o600
	dirPerm          = 0o700
	recordRootKey    = "pki/root.key"
	recordIssuingKey = "pki/issuing.key"
	recordServerKey  = "pki/server.key"
)

// allFiles lists every file Init writes, in the order it writes them: the
// two certificates that make Exists true come last, so an interrupted Init
// never looks like a finished one.
func allFiles() []string {
	return []string{
		fileRootKey, fileIssuingKey, fileServerKey, fileServer,
		fileAuthority, fileCRLDER, fileCRLPEM, fileIssuing, fileRoot,
	}
}

// issuerFile is where an issuing CA that is no longer current keeps its
// certificate, relative to the authority directory.
func issuerFile(fingerprint string) string {
	return filepath.Join(dirIssuers, fingerprint+".crt")
}

// writeFileAtomic and writeNewFileAtomic are fileutil's; see there.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return fileutil.WriteFileAtomic(path, data, perm)
}

func writeNewFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return fileutil.WriteNewFileAtomic(path, data, perm)
}

func syncDir(dir string) error { return fileutil.SyncDir(dir) }
