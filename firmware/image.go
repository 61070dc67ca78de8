package firmware

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"math"
)

// DefaultHeaderSize is the header size Sign uses when SignOptions.HeaderSize
// is 0: 0x200, Zephyr's usual CONFIG_ROM_START_OFFSET, which keeps the
// vector table that follows the header suitably aligned.
const DefaultHeaderSize = 0x200

// Image format constants, named as in MCUboot's bootutil/image.h.
const (
	ImageMagic            = 0x96f3b83d // IMAGE_MAGIC: first word of the header
	TLVInfoMagic          = 0x6907     // IMAGE_TLV_INFO_MAGIC: the unprotected TLV area
	ProtectedTLVInfoMagic = 0x6908     // IMAGE_TLV_PROT_INFO_MAGIC: the protected TLV area

	TLVKeyHash         = 0x01 // IMAGE_TLV_KEYHASH: SHA-256 of the signing key's SubjectPublicKeyInfo
	TLVSHA256          = 0x10 // IMAGE_TLV_SHA256: SHA-256 of header, payload and protected TLVs
	TLVECDSASig        = 0x22 // IMAGE_TLV_ECDSA_SIG (formerly ECDSA256): DER ECDSA signature of the SHA-256
	TLVEd25519         = 0x24 // IMAGE_TLV_ED25519: Ed25519 signature of the 32-byte SHA-256
	TLVSecurityCounter = 0x50 // IMAGE_TLV_SEC_CNT: uint32 little-endian, protected area only
)

const (
	headerLen    = 32 // sizeof(struct image_header)
	tlvInfoLen   = 4  // sizeof(struct image_tlv_info)
	tlvHeaderLen = 4  // sizeof(struct image_tlv)

	// maxTLVs bounds the entries of one TLV area so that parsing allocates
	// in proportion to real images (which carry fewer than ten), not to
	// what 64 KiB of zero-length entries could claim.
	maxTLVs = 256

	// maxECDSASigLen is MCUboot's SIG_BUF_SIZE for ECDSA: longer
	// signature TLVs make bootutil_img_validate fail.
	maxECDSASigLen = 128

	// Header flags (IMAGE_F_*) that Warden must know about.
	flagEncryptedAES128 = 0x00000004
	flagEncryptedAES256 = 0x00000008
	flagRAMLoad         = 0x00000020

	// MCUboot's swap-mode trailer, as imgtool computes it (image.py,
	// _trailer_size): the status area of maxSectors*3 writes, then
	// image_ok, copy_done, swap_info and swap_size, then the boot magic.
	trailerMaxSectors = 128
	bootMagicLen      = 16
	defaultMaxAlign   = 8
)

// bootMagic is the boot magic imgtool writes at the end of a padded image
// when the flash alignment is at most 8 (BOOT_MAX_ALIGN 8).
var bootMagic = [bootMagicLen]byte{
	0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f,
	0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80,
}

// bootMagicAlignedSuffix follows the little-endian uint16 BOOT_MAX_ALIGN in
// the boot magic for alignments above 8.
var bootMagicAlignedSuffix = [bootMagicLen - 2]byte{
	0x2d, 0xe1, 0x5d, 0x29, 0x41, 0x0b, 0x8d, 0x77,
	0x67, 0x9c, 0x11, 0x0f, 0x1f, 0x8a,
}

// Header is the 32-byte MCUboot image header (struct image_header),
// little-endian. Its last word (_pad1) is always written as zero and is
// not exposed.
type Header struct {
	Magic            uint32 // ImageMagic
	LoadAddr         uint32 // RAM load address, 0 for execute-in-place
	HeaderSize       uint16 // bytes before the payload: this header plus a gap
	ProtectedTLVSize uint16 // size of the protected TLV area including its info header, 0 if none
	ImageSize        uint32 // payload bytes
	Flags            uint32 // IMAGE_F_* flags
	Version          Version
}

// TLV is one type-length-value entry of a TLV area: a little-endian uint16
// type and uint16 length, then the value.
type TLV struct {
	Type  uint16
	Value []byte
}

// SignOptions are the imgtool sign options Sign supports.
type SignOptions struct {
	// Version goes into the header (imgtool --version).
	Version Version
	// SecurityCounter goes into the protected TLV 0x50 (imgtool
	// --security-counter). Devices refuse images below their counter.
	SecurityCounter uint32
	// HeaderSize is the offset of the payload (imgtool --header-size): 0
	// means DefaultHeaderSize; at least 32. The gap after the 32-byte
	// header is written as zeros.
	HeaderSize int
	// LoadAddr is the RAM load address (imgtool --load-addr); 0 for
	// execute-in-place images. Non-zero sets the RAM_LOAD flag, as imgtool
	// does.
	LoadAddr uint32
	// Align is the flash write alignment used to size the MCUboot trailer
	// (imgtool --align): 1, 2, 4, 8, 16 or 32; 0 means 8.
	Align int
	// SlotSize, when not 0, is the size of the slot the image must fit in
	// together with MCUboot's swap-mode trailer (imgtool --slot-size, with
	// --max-sectors 128).
	SlotSize int
	// Pad pads the image to SlotSize with 0xff and ends it with the boot
	// magic (imgtool --pad), so that writing it to the secondary slot also
	// requests the upgrade. Requires SlotSize.
	Pad bool
}

// Sign builds an MCUboot image of payload signed by signer, byte for byte
// what imgtool sign would produce with the same options and key (except for
// the randomness of ECDSA signatures):
//
//	header (32 bytes) | zero gap to HeaderSize | payload
//	| protected TLV area: info 0x6908, security counter 0x50
//	| TLV area: info 0x6907, SHA-256 0x10, key hash 0x01, signature 0x22 or 0x24
//	| padding to SlotSize (Pad only)
//
// The signer's public key must be ECDSA P-256 (signature 0x22: ASN.1 DER
// ECDSA over the SHA-256) or Ed25519 (signature 0x24: Ed25519 over the
// 32-byte SHA-256, MCUboot's default, not "pure" mode). Any crypto.Signer
// with such a public key works, so the release key can stay in an HSM;
// every signature is checked against the public key before it is used.
func Sign(payload []byte, signer crypto.Signer, opts SignOptions) ([]byte, error) {
	kind, pub, err := signerKind(signer)
	if err != nil {
		return nil, err
	}
	hdrSize := opts.HeaderSize
	if hdrSize == 0 {
		hdrSize = DefaultHeaderSize
	}
	if hdrSize < headerLen || hdrSize > math.MaxUint16 {
		return nil, fmt.Errorf("%w: sign: header size %d: must be between %d and %d", ErrMalformed, hdrSize, headerLen, math.MaxUint16)
	}
	align := opts.Align
	if align == 0 {
		align = defaultMaxAlign
	}
	switch align {
	case 1, 2, 4, 8, 16, 32:
	default:
		return nil, fmt.Errorf("%w: sign: alignment %d: must be 1, 2, 4, 8, 16 or 32", ErrMalformed, align)
	}
	if opts.SlotSize < 0 {
		return nil, fmt.Errorf("%w: sign: negative slot size %d", ErrMalformed, opts.SlotSize)
	}
	if opts.SlotSize > math.MaxUint32 {
		return nil, fmt.Errorf("%w: sign: slot size %d exceeds 4 GiB", ErrMalformed, opts.SlotSize)
	}
	if opts.Pad && opts.SlotSize == 0 {
		return nil, fmt.Errorf("%w: sign: padding needs a slot size", ErrMalformed)
	}
	if uint64(len(payload)) > math.MaxUint32 {
		return nil, fmt.Errorf("%w: sign: payload of %d bytes does not fit the header's 32-bit size", ErrMalformed, len(payload))
	}
	keyHash, err := KeyHash(pub)
	if err != nil {
		return nil, err
	}

	const protSize = tlvInfoLen + tlvHeaderLen + 4
	sigType, sigMax := uint16(TLVEd25519), ed25519.SignatureSize
	if kind == kindECDSAP256 {
		sigType, sigMax = TLVECDSASig, 72
	}
	img := make([]byte, 0, hdrSize+len(payload)+protSize+tlvInfoLen+3*tlvHeaderLen+2*sha256.Size+sigMax)

	var flags uint32
	if opts.LoadAddr != 0 {
		flags |= flagRAMLoad
	}
	img = binary.LittleEndian.AppendUint32(img, ImageMagic)
	img = binary.LittleEndian.AppendUint32(img, opts.LoadAddr)
	img = binary.LittleEndian.AppendUint16(img, uint16(hdrSize))
	img = binary.LittleEndian.AppendUint16(img, protSize)
	img = binary.LittleEndian.AppendUint32(img, uint32(len(payload)))
	img = binary.LittleEndian.AppendUint32(img, flags)
	img = append(img, opts.Version.Major, opts.Version.Minor)
	img = binary.LittleEndian.AppendUint16(img, opts.Version.Revision)
	img = binary.LittleEndian.AppendUint32(img, opts.Version.Build)
	img = binary.LittleEndian.AppendUint32(img, 0) // _pad1
	img = append(img, make([]byte, hdrSize-headerLen)...)
	img = append(img, payload...)

	img = binary.LittleEndian.AppendUint16(img, ProtectedTLVInfoMagic)
	img = binary.LittleEndian.AppendUint16(img, protSize)
	img = appendTLV(img, TLVSecurityCounter, binary.LittleEndian.AppendUint32(nil, opts.SecurityCounter))

	digest := sha256.Sum256(img)
	sig, err := signDigest(signer, kind, pub, digest[:])
	if err != nil {
		return nil, err
	}

	tot := tlvInfoLen + 3*tlvHeaderLen + sha256.Size + len(keyHash) + len(sig)
	img = binary.LittleEndian.AppendUint16(img, TLVInfoMagic)
	img = binary.LittleEndian.AppendUint16(img, uint16(tot))
	img = appendTLV(img, TLVSHA256, digest[:])
	img = appendTLV(img, TLVKeyHash, keyHash[:])
	img = appendTLV(img, sigType, sig)

	if opts.SlotSize > 0 {
		trailer := trailerSize(align)
		if len(img)+trailer > opts.SlotSize {
			return nil, fmt.Errorf("%w: sign: image is %d bytes (0x%x) and MCUboot's trailer needs %d bytes (0x%x) at alignment %d: %d bytes do not fit the %d-byte (0x%x) slot",
				ErrMalformed, len(img), len(img), trailer, trailer, align, len(img)+trailer, opts.SlotSize, opts.SlotSize)
		}
		if opts.Pad {
			img = padToSlot(img, opts.SlotSize, align)
		}
	}
	return img, nil
}

func appendTLV(b []byte, typ uint16, value []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, typ)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(value)))
	return append(b, value...)
}

// signDigest signs an image digest the way bootutil verifies it and checks
// the result, so that a faulty signer cannot produce an image that every
// device would refuse.
func signDigest(signer crypto.Signer, kind keyKind, pub crypto.PublicKey, digest []byte) ([]byte, error) {
	switch kind {
	case kindECDSAP256:
		sig, err := signer.Sign(rand.Reader, digest, crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("firmware: sign image: ECDSA signer: %w", err)
		}
		if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest, sig) || len(sig) > 72 {
			return nil, fmt.Errorf("%w: the ECDSA signer returned a signature that does not verify", ErrSignature)
		}
		return sig, nil
	case kindEd25519:
		// crypto.Hash(0): plain Ed25519 of the 32-byte digest, as
		// imgtool's sign_digest and bootutil's ED25519_verify.
		sig, err := signer.Sign(rand.Reader, digest, crypto.Hash(0))
		if err != nil {
			return nil, fmt.Errorf("firmware: sign image: Ed25519 signer: %w", err)
		}
		if len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub.(ed25519.PublicKey), digest, sig) {
			return nil, fmt.Errorf("%w: the Ed25519 signer returned a signature that does not verify", ErrSignature)
		}
		return sig, nil
	}
	return nil, ErrUnsupportedKey
}

// trailerSize is imgtool's _trailer_size for swap mode without encryption.
func trailerSize(align int) int {
	maxAlign := max(defaultMaxAlign, align)
	magicAligned := (bootMagicLen + maxAlign - 1) / maxAlign * maxAlign
	return trailerMaxSectors*3*align + maxAlign*4 + magicAligned
}

// padToSlot is imgtool's pad_to: erased flash (0xff) up to the slot's end,
// whose last 16 bytes are the boot magic for this alignment.
func padToSlot(img []byte, slotSize, align int) []byte {
	out := make([]byte, slotSize)
	n := copy(out, img)
	for i := n; i < slotSize-bootMagicLen; i++ {
		out[i] = 0xff
	}
	magic := bootMagicFor(align)
	copy(out[slotSize-bootMagicLen:], magic[:])
	return out
}

func bootMagicFor(align int) [bootMagicLen]byte {
	maxAlign := max(defaultMaxAlign, align)
	if maxAlign == defaultMaxAlign {
		return bootMagic
	}
	var m [bootMagicLen]byte
	binary.LittleEndian.PutUint16(m[:2], uint16(maxAlign))
	copy(m[2:], bootMagicAlignedSuffix[:])
	return m
}

// Image is a parsed MCUboot image. Its slices share memory with the bytes
// given to ParseImage; do not modify those while the Image is in use.
type Image struct {
	Header      Header
	Payload     []byte // the ImageSize bytes after HeaderSize
	Protected   []TLV  // the protected TLV area, in order (covered by the SHA-256)
	Unprotected []TLV  // the TLV area, in order (not covered: hash, key hash, signatures)
	Size        int    // header, gap, payload and both TLV areas; trailing padding excluded

	raw       []byte // the image's Size bytes
	signedLen int    // HeaderSize + ImageSize + ProtectedTLVSize: what TLV 0x10 hashes
}

// ParseImage checks that b is a structurally valid MCUboot image and
// returns it. It verifies nothing cryptographic (see Verify) but checks
// everything bootutil relies on: the magic, a header size of at least 32,
// that header, payload and both TLV areas lie within b without overflow,
// the TLV area magics, that the protected area's total equals the header's
// ProtectedTLVSize, that the entries of each area fill it exactly, that the
// known TLVs appear at most once with their proper sizes (SHA-256 32
// bytes, key hash 1 to 32 bytes, Ed25519 signature 64, ECDSA signature at
// most 128, security counter 4) and in their proper area (the security
// counter only in the protected one, hash, key hash and signatures only in
// the other).
//
// Bytes after the TLV area are accepted only as slot padding: all 0xff (or
// all 0x00, for flash that erases to zero), optionally ending in the
// 16-byte MCUboot boot magic, which is what imgtool --pad writes. Anything
// else is refused: a served file must not carry unexplained data.
//
// ParseImage never panics and allocates only in proportion to len(b).
func ParseImage(b []byte) (*Image, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("%w: image of %d bytes is shorter than the %d-byte header", ErrMalformed, len(b), headerLen)
	}
	h := Header{
		Magic:            binary.LittleEndian.Uint32(b[0:]),
		LoadAddr:         binary.LittleEndian.Uint32(b[4:]),
		HeaderSize:       binary.LittleEndian.Uint16(b[8:]),
		ProtectedTLVSize: binary.LittleEndian.Uint16(b[10:]),
		ImageSize:        binary.LittleEndian.Uint32(b[12:]),
		Flags:            binary.LittleEndian.Uint32(b[16:]),
		Version: Version{
			Major:    b[20],
			Minor:    b[21],
			Revision: binary.LittleEndian.Uint16(b[22:]),
			Build:    binary.LittleEndian.Uint32(b[24:]),
		},
	}
	if h.Magic != ImageMagic {
		return nil, fmt.Errorf("%w: image magic is 0x%08x, want 0x%08x (not an MCUboot image)", ErrMalformed, h.Magic, uint32(ImageMagic))
	}
	if h.HeaderSize < headerLen {
		return nil, fmt.Errorf("%w: header size %d is below %d", ErrMalformed, h.HeaderSize, headerLen)
	}
	n := uint64(len(b))
	payloadEnd := uint64(h.HeaderSize) + uint64(h.ImageSize)
	if payloadEnd > n {
		return nil, fmt.Errorf("%w: header (%d bytes) and payload (%d bytes) need %d bytes, the image has %d", ErrMalformed, h.HeaderSize, h.ImageSize, payloadEnd, n)
	}
	img := &Image{Header: h, Payload: b[h.HeaderSize:payloadEnd:payloadEnd]}

	off := payloadEnd
	if off+tlvInfoLen > n {
		return nil, fmt.Errorf("%w: image ends before its TLV area (offset %d)", ErrMalformed, off)
	}
	if magic := binary.LittleEndian.Uint16(b[off:]); h.ProtectedTLVSize != 0 {
		if magic != ProtectedTLVInfoMagic {
			return nil, fmt.Errorf("%w: header announces a %d-byte protected TLV area but offset %d holds magic 0x%04x, want 0x%04x", ErrMalformed, h.ProtectedTLVSize, off, magic, ProtectedTLVInfoMagic)
		}
		tot := binary.LittleEndian.Uint16(b[off+2:])
		if tot != h.ProtectedTLVSize {
			return nil, fmt.Errorf("%w: protected TLV area totals %d bytes, the header says %d", ErrMalformed, tot, h.ProtectedTLVSize)
		}
		if tot < tlvInfoLen {
			return nil, fmt.Errorf("%w: protected TLV area of %d bytes is shorter than its info header", ErrMalformed, tot)
		}
		end := off + uint64(tot)
		if end > n {
			return nil, fmt.Errorf("%w: protected TLV area ends at %d, the image has %d bytes", ErrMalformed, end, n)
		}
		tlvs, err := parseTLVs(b[off+tlvInfoLen:end], "protected")
		if err != nil {
			return nil, err
		}
		img.Protected = tlvs
		off = end
	} else if magic == ProtectedTLVInfoMagic {
		return nil, fmt.Errorf("%w: protected TLV area present but the header's protected size is 0", ErrMalformed)
	}
	img.signedLen = int(off)

	if off+tlvInfoLen > n {
		return nil, fmt.Errorf("%w: image ends before its TLV area (offset %d)", ErrMalformed, off)
	}
	if magic := binary.LittleEndian.Uint16(b[off:]); magic != TLVInfoMagic {
		return nil, fmt.Errorf("%w: TLV area at offset %d has magic 0x%04x, want 0x%04x", ErrMalformed, off, magic, TLVInfoMagic)
	}
	tot := binary.LittleEndian.Uint16(b[off+2:])
	if tot < tlvInfoLen {
		return nil, fmt.Errorf("%w: TLV area of %d bytes is shorter than its info header", ErrMalformed, tot)
	}
	end := off + uint64(tot)
	if end > n {
		return nil, fmt.Errorf("%w: TLV area ends at %d, the image has %d bytes (truncated?)", ErrMalformed, end, n)
	}
	tlvs, err := parseTLVs(b[off+tlvInfoLen:end], "unprotected")
	if err != nil {
		return nil, err
	}
	img.Unprotected = tlvs
	img.Size = int(end)
	img.raw = b[:end:end]

	if err := checkTLVRules(img.Protected, img.Unprotected); err != nil {
		return nil, err
	}
	if err := checkPadding(b[end:]); err != nil {
		return nil, fmt.Errorf("%w: %d bytes after the TLV area: %v", ErrMalformed, n-end, err)
	}
	return img, nil
}

// parseTLVs splits a TLV area's entries, which must fill it exactly.
func parseTLVs(area []byte, name string) ([]TLV, error) {
	count := 0
	for off := 0; off < len(area); count++ {
		if count == maxTLVs {
			return nil, fmt.Errorf("%w: %s TLV area holds more than %d entries", ErrMalformed, name, maxTLVs)
		}
		if len(area)-off < tlvHeaderLen {
			return nil, fmt.Errorf("%w: %s TLV area: %d stray bytes at its end", ErrMalformed, name, len(area)-off)
		}
		l := int(binary.LittleEndian.Uint16(area[off+2:]))
		if l > len(area)-off-tlvHeaderLen {
			return nil, fmt.Errorf("%w: %s TLV 0x%02x of %d bytes runs past its area", ErrMalformed, name, binary.LittleEndian.Uint16(area[off:]), l)
		}
		off += tlvHeaderLen + l
	}
	tlvs := make([]TLV, 0, count)
	for off := 0; off < len(area); {
		t := binary.LittleEndian.Uint16(area[off:])
		l := int(binary.LittleEndian.Uint16(area[off+2:]))
		tlvs = append(tlvs, TLV{Type: t, Value: area[off+tlvHeaderLen : off+tlvHeaderLen+l : off+tlvHeaderLen+l]})
		off += tlvHeaderLen + l
	}
	return tlvs, nil
}

// checkTLVRules applies the per-type rules of ParseImage.
func checkTLVRules(prot, unprot []TLV) error {
	seen := map[uint16]bool{}
	for _, t := range prot {
		switch t.Type {
		case TLVSecurityCounter:
			if seen[t.Type] {
				return fmt.Errorf("%w: more than one security counter TLV", ErrMalformed)
			}
			seen[t.Type] = true
			if len(t.Value) != 4 {
				return fmt.Errorf("%w: security counter TLV is %d bytes, want 4", ErrMalformed, len(t.Value))
			}
		case TLVSHA256, TLVKeyHash, TLVECDSASig, TLVEd25519:
			return fmt.Errorf("%w: TLV 0x%02x belongs in the unprotected TLV area, not the protected one", ErrMalformed, t.Type)
		}
	}
	clear(seen)
	for _, t := range unprot {
		switch t.Type {
		case TLVSHA256, TLVKeyHash, TLVECDSASig, TLVEd25519:
			if seen[t.Type] {
				return fmt.Errorf("%w: TLV 0x%02x appears more than once", ErrMalformed, t.Type)
			}
			seen[t.Type] = true
		case TLVSecurityCounter:
			// bootutil reads the counter wherever it is, but outside the
			// protected area nothing signs it.
			return fmt.Errorf("%w: security counter TLV outside the protected TLV area", ErrMalformed)
		}
		switch {
		case t.Type == TLVSHA256 && len(t.Value) != sha256.Size:
			return fmt.Errorf("%w: SHA-256 TLV is %d bytes, want %d", ErrMalformed, len(t.Value), sha256.Size)
		case t.Type == TLVKeyHash && (len(t.Value) == 0 || len(t.Value) > sha256.Size):
			return fmt.Errorf("%w: key hash TLV is %d bytes, want 1 to %d", ErrMalformed, len(t.Value), sha256.Size)
		case t.Type == TLVEd25519 && len(t.Value) != ed25519.SignatureSize:
			return fmt.Errorf("%w: Ed25519 signature TLV is %d bytes, want %d", ErrMalformed, len(t.Value), ed25519.SignatureSize)
		case t.Type == TLVECDSASig && (len(t.Value) == 0 || len(t.Value) > maxECDSASigLen):
			return fmt.Errorf("%w: ECDSA signature TLV is %d bytes, want 1 to %d", ErrMalformed, len(t.Value), maxECDSASigLen)
		}
	}
	return nil
}

// checkPadding accepts what imgtool --pad appends: erased flash, optionally
// ending in the boot magic.
func checkPadding(rest []byte) error {
	if len(rest) == 0 {
		return nil
	}
	fill := rest
	if len(rest) >= bootMagicLen && isBootMagic(rest[len(rest)-bootMagicLen:]) {
		fill = rest[:len(rest)-bootMagicLen]
	}
	if len(fill) == 0 {
		return nil
	}
	v := fill[0]
	if v != 0xff && v != 0x00 {
		return fmt.Errorf("padding byte 0x%02x is neither 0xff nor 0x00", v)
	}
	for i, c := range fill {
		if c != v {
			return fmt.Errorf("padding of 0x%02x bytes holds 0x%02x at offset %d", v, c, i)
		}
	}
	return nil
}

func isBootMagic(m []byte) bool {
	if bytes.Equal(m, bootMagic[:]) {
		return true
	}
	align := binary.LittleEndian.Uint16(m)
	return (align == 16 || align == 32) && bytes.Equal(m[2:], bootMagicAlignedSuffix[:])
}

func findTLV(tlvs []TLV, typ uint16) (TLV, bool) {
	for _, t := range tlvs {
		if t.Type == typ {
			return t, true
		}
	}
	return TLV{}, false
}

// SecurityCounter returns the value of the protected security counter TLV
// (0x50), and false if the image has none.
func (img *Image) SecurityCounter() (uint32, bool) {
	t, ok := findTLV(img.Protected, TLVSecurityCounter)
	if !ok || len(t.Value) != 4 {
		return 0, false
	}
	return binary.LittleEndian.Uint32(t.Value), true
}

// Digest returns SHA-256 of the signed region (header, gap, payload and
// protected TLV area): the value the SHA-256 TLV must hold and the message
// the signature covers.
func (img *Image) Digest() [32]byte {
	return sha256.Sum256(img.raw[:img.signedLen])
}

// KeyHash returns a copy of the key hash TLV (0x01), and false if the image
// has none. Warden writes the full 32-byte SHA-256 of the key's
// SubjectPublicKeyInfo; other tools (Mynewt's newt) write a prefix, which
// MCUboot also accepts.
func (img *Image) KeyHash() ([]byte, bool) {
	t, ok := findTLV(img.Unprotected, TLVKeyHash)
	if !ok {
		return nil, false
	}
	return bytes.Clone(t.Value), true
}

// Unknown returns copies of the unprotected TLVs whose types Warden does
// not know (anything but SHA-256, key hash and the two signatures).
// MCUboot skips them and they are outside the signature, so they cannot
// change what boots; Verify accepts them, callers may warn. A bootloader
// built with MCUBOOT_USE_TLV_ALLOW_LIST refuses such images.
func (img *Image) Unknown() []TLV {
	var out []TLV
	for _, t := range img.Unprotected {
		switch t.Type {
		case TLVSHA256, TLVKeyHash, TLVECDSASig, TLVEd25519:
			continue
		}
		out = append(out, TLV{Type: t.Type, Value: bytes.Clone(t.Value)})
	}
	return out
}

// Verify checks what MCUboot's bootutil_img_validate checks for an image
// signed with pub, in the same order: that the SHA-256 TLV equals Digest
// (else ErrDigest), that a key hash TLV names pub (else ErrKeyMismatch;
// like bootutil's bootutil_find_key a prefix of pub's key hash matches),
// and that a signature TLV of pub's kind follows that key hash and
// verifies over the digest (else ErrSignature). pub is an *ecdsa.PublicKey
// on P-256 or an ed25519.PublicKey. Encrypted images are refused: their
// hash covers the plaintext, which Warden never sees.
func (img *Image) Verify(pub crypto.PublicKey) error {
	kind, err := publicKind(pub)
	if err != nil {
		return err
	}
	if img == nil || img.raw == nil {
		return fmt.Errorf("%w: verify: not a parsed image", ErrMalformed)
	}
	if img.Header.Flags&(flagEncryptedAES128|flagEncryptedAES256) != 0 {
		return fmt.Errorf("%w: encrypted images are not supported (flags 0x%08x)", ErrMalformed, img.Header.Flags)
	}
	want, err := KeyHash(pub)
	if err != nil {
		return err
	}

	digest := img.Digest()
	hashTLV, ok := findTLV(img.Unprotected, TLVSHA256)
	if !ok {
		return fmt.Errorf("%w: image has no SHA-256 TLV", ErrDigest)
	}
	if subtle.ConstantTimeCompare(hashTLV.Value, digest[:]) != 1 {
		return fmt.Errorf("%w: SHA-256 TLV is %x, the image hashes to %x", ErrDigest, hashTLV.Value, digest)
	}

	sigType := uint16(TLVEd25519)
	if kind == kindECDSAP256 {
		sigType = TLVECDSASig
	}
	// bootutil's loop: a key hash TLV selects a key, the next signature
	// TLV of the configured type is checked against it.
	var (
		sawKeyHash, keyMatches, selected bool
		sig                              []byte
	)
	for _, t := range img.Unprotected {
		switch t.Type {
		case TLVKeyHash:
			sawKeyHash = true
			selected = len(t.Value) > 0 && len(t.Value) <= len(want) &&
				subtle.ConstantTimeCompare(t.Value, want[:len(t.Value)]) == 1
			keyMatches = keyMatches || selected
		case sigType:
			if selected && sig == nil {
				sig = t.Value
			}
			selected = false
		}
	}
	switch {
	case !sawKeyHash:
		return fmt.Errorf("%w: image has no key hash TLV", ErrKeyMismatch)
	case !keyMatches:
		kh, _ := findTLV(img.Unprotected, TLVKeyHash)
		return fmt.Errorf("%w: image names key %x, verifying with %x", ErrKeyMismatch, kh.Value, want)
	case sig == nil:
		return fmt.Errorf("%w: no %s signature TLV (0x%02x) follows the key hash", ErrSignature, kind, sigType)
	}
	if !verifyDigest(kind, pub, digest[:], sig) {
		return fmt.Errorf("%w: %s signature does not verify", ErrSignature, kind)
	}
	return nil
}

// verifyDigest checks an image signature as bootutil does.
func verifyDigest(kind keyKind, pub crypto.PublicKey, digest, sig []byte) bool {
	switch kind {
	case kindECDSAP256:
		return ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest, trimECDSAPadding(sig))
	case kindEd25519:
		return len(sig) == ed25519.SignatureSize && ed25519.Verify(pub.(ed25519.PublicKey), digest, sig)
	}
	return false
}

// trimECDSAPadding drops the zero bytes imgtool --pad-sig appends to reach
// 72 bytes (for MCUboot before 1.5); bootutil's DER parser ignores them
// and so does imgtool verify. Only zeros after a complete short-form DER
// SEQUENCE are dropped.
func trimECDSAPadding(sig []byte) []byte {
	if len(sig) < 2 || sig[0] != 0x30 || sig[1] >= 0x80 {
		return sig
	}
	n := int(sig[1]) + 2
	if n >= len(sig) {
		return sig
	}
	for _, c := range sig[n:] {
		if c != 0 {
			return sig
		}
	}
	return sig[:n]
}
