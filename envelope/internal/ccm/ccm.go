// Package ccm implements Counter with CBC-MAC (RFC 3610, NIST SP 800-38C)
// as a cipher.AEAD over any 128-bit block cipher. Go's standard library has
// no CCM; the envelope's ccm-8 suite (COSE algorithm 10, OSCORE's default)
// needs it with an 8-byte tag and a 13-byte nonce.
//
// The code follows RFC 3610 §2 step by step: B0 and the length-prefixed AAD
// and message feed a CBC-MAC; counter blocks A1, A2, ... encrypt the message
// and A0 encrypts the tag.
package ccm

import (
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

const blockSize = 16

// errOpen is the only error Open returns for a message that fails: callers
// must not learn which check failed.
var errOpen = errors.New("ccm: message authentication failed")

// AEAD is CCM over one key. It implements cipher.AEAD; New returns the
// concrete type so that callers' buffers need not escape to the heap.
type AEAD struct {
	b         cipher.Block
	tagSize   int    // M in RFC 3610
	nonceSize int    // 15 - L
	lenSize   int    // L: bytes of the message-length field
	maxLen    uint64 // 2^(8L) - 1
}

var _ cipher.AEAD = (*AEAD)(nil)

// work is the scratch space of one Seal or Open: the CBC-MAC state, a
// counter block and a key-stream block. Keeping them in one value costs at
// most one allocation when the block cipher's methods make them escape.
type work struct {
	x   [blockSize]byte // CBC-MAC state X_i
	pos int             // bytes of the current block already XORed into x
	a   [blockSize]byte // B0, then counter blocks A_i
	s   [blockSize]byte // key stream S_i
}

// shortCTR is the message length up to which the key stream is generated
// block by block; above it crypto/cipher's pipelined CTR is faster despite
// its allocation.
const shortCTR = 512

// New returns CCM over b, which must have a 16-byte block, with a tag of
// tagSize bytes (4, 6, ..., 16) and a nonce of nonceSize bytes (7..13). The
// nonce size fixes the largest message: 2^(8·(15-nonceSize)) - 1 bytes, 65535
// for a 13-byte nonce.
func New(b cipher.Block, tagSize, nonceSize int) (*AEAD, error) {
	if b.BlockSize() != blockSize {
		return nil, fmt.Errorf("ccm: block size is %d bytes; CCM needs a 16-byte block cipher", b.BlockSize())
	}
	if tagSize < 4 || tagSize > 16 || tagSize%2 != 0 {
		return nil, fmt.Errorf("ccm: tag size %d is not one of 4, 6, 8, 10, 12, 14, 16", tagSize)
	}
	if nonceSize < 7 || nonceSize > 13 {
		return nil, fmt.Errorf("ccm: nonce size %d is outside 7..13", nonceSize)
	}
	c := &AEAD{b: b, tagSize: tagSize, nonceSize: nonceSize, lenSize: 15 - nonceSize}
	if c.lenSize >= 8 {
		c.maxLen = ^uint64(0)
	} else {
		c.maxLen = 1<<(8*c.lenSize) - 1
	}
	return c, nil
}

func (c *AEAD) NonceSize() int { return c.nonceSize }
func (c *AEAD) Overhead() int  { return c.tagSize }

// Seal encrypts and authenticates plaintext and appends the result to dst.
// Like crypto/cipher's AEADs it panics on a nonce of the wrong size or a
// plaintext longer than the nonce size allows: those are programming errors
// that callers rule out before calling (the envelope checks lengths first).
// dst and plaintext may overlap exactly or not at all.
func (c *AEAD) Seal(dst, nonce, plaintext, additionalData []byte) []byte {
	if len(nonce) != c.nonceSize {
		panic("ccm: incorrect nonce length given to Seal")
	}
	if uint64(len(plaintext)) > c.maxLen {
		panic("ccm: plaintext too large for the nonce size")
	}
	// The MAC covers the plaintext, so compute it before the plaintext may be
	// overwritten by an in-place encryption.
	var w work
	c.cbcMAC(&w, nonce, additionalData, plaintext)
	ret, out := sliceForAppend(dst, len(plaintext)+c.tagSize)
	c.ctr(&w, nonce, out[:len(plaintext)], plaintext)
	c.s0(&w, nonce)
	subtle.XORBytes(out[len(plaintext):], w.x[:c.tagSize], w.s[:c.tagSize])
	return ret
}

// Open authenticates and decrypts ciphertext (message then tag) and appends
// the plaintext to dst. Unlike Seal it never panics: every failure, including
// a nonce of the wrong size, is the same error, and on failure nothing
// decrypted is left in dst's spare capacity.
func (c *AEAD) Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error) {
	if len(nonce) != c.nonceSize || len(ciphertext) < c.tagSize {
		return nil, errOpen
	}
	n := len(ciphertext) - c.tagSize
	if uint64(n) > c.maxLen {
		return nil, errOpen
	}
	// U = T XOR S0: recover T from the received tag before out, which may
	// alias the ciphertext, is written.
	var w work
	c.s0(&w, nonce)
	var received [blockSize]byte
	subtle.XORBytes(received[:c.tagSize], ciphertext[n:], w.s[:c.tagSize])

	ret, out := sliceForAppend(dst, n)
	c.ctr(&w, nonce, out, ciphertext[:n])
	c.cbcMAC(&w, nonce, additionalData, out)
	if subtle.ConstantTimeCompare(w.x[:c.tagSize], received[:c.tagSize]) != 1 {
		clear(out)
		return nil, errOpen
	}
	return ret, nil
}

// cbcMAC computes X_{n+1} of RFC 3610 §2.2 into w.x, over B0, the encoded
// AAD and the message, each zero-padded to a whole block.
func (c *AEAD) cbcMAC(w *work, nonce, ad, msg []byte) {
	flags := byte((c.tagSize-2)/2)<<3 | byte(c.lenSize-1)
	if len(ad) > 0 {
		flags |= 0x40 // Adata
	}
	w.a[0] = flags
	copy(w.a[1:], nonce)
	putUint(w.a[1+c.nonceSize:], uint64(len(msg)))
	w.x, w.pos = [blockSize]byte{}, 0
	c.macWrite(w, w.a[:])
	if len(ad) > 0 {
		// l(a) encoding, RFC 3610 §2.2.
		var la [10]byte
		var n int
		switch a := uint64(len(ad)); {
		case a < 1<<16-1<<8:
			binary.BigEndian.PutUint16(la[:], uint16(a))
			n = 2
		case a < 1<<32:
			la[0], la[1] = 0xff, 0xfe
			binary.BigEndian.PutUint32(la[2:], uint32(a))
			n = 6
		default:
			la[0], la[1] = 0xff, 0xff
			binary.BigEndian.PutUint64(la[2:], a)
			n = 10
		}
		c.macWrite(w, la[:n])
		c.macWrite(w, ad)
		c.macPad(w)
	}
	c.macWrite(w, msg)
	c.macPad(w)
}

// macWrite is a streaming CBC-MAC: bytes are XORed into the state, which is
// encrypted whenever a block is full.
func (c *AEAD) macWrite(w *work, p []byte) {
	for len(p) > 0 {
		if w.pos == 0 && len(p) >= blockSize {
			subtle.XORBytes(w.x[:], w.x[:], p[:blockSize])
			c.b.Encrypt(w.x[:], w.x[:])
			p = p[blockSize:]
			continue
		}
		n := subtle.XORBytes(w.x[w.pos:], w.x[w.pos:], p)
		w.pos += n
		p = p[n:]
		if w.pos == blockSize {
			c.b.Encrypt(w.x[:], w.x[:])
			w.pos = 0
		}
	}
}

// macPad finishes a partial block, which is the same as zero-padding it.
func (c *AEAD) macPad(w *work) {
	if w.pos > 0 {
		c.b.Encrypt(w.x[:], w.x[:])
		w.pos = 0
	}
}

// ctr XORs src with the key stream S1, S2, ... into dst (RFC 3610 §2.3).
// dst and src may overlap exactly. The counter occupies the last L bytes of
// A_i; crypto/cipher's CTR increments the whole block, which is the same
// thing because a message of at most 2^(8L)-1 bytes never carries out of
// those L bytes.
func (c *AEAD) ctr(w *work, nonce, dst, src []byte) {
	c.counterBlock(w, nonce, 1)
	if len(src) > shortCTR {
		cipher.NewCTR(c.b, w.a[:]).XORKeyStream(dst, src)
		return
	}
	for i := uint64(1); len(src) > 0; i++ {
		putUint(w.a[1+c.nonceSize:], i)
		c.b.Encrypt(w.s[:], w.a[:])
		n := subtle.XORBytes(dst, src, w.s[:])
		dst, src = dst[n:], src[n:]
	}
}

// s0 puts E(K, A0), which encrypts the tag, into w.s.
func (c *AEAD) s0(w *work, nonce []byte) {
	c.counterBlock(w, nonce, 0)
	c.b.Encrypt(w.s[:], w.a[:])
}

func (c *AEAD) counterBlock(w *work, nonce []byte, i uint64) {
	w.a = [blockSize]byte{}
	w.a[0] = byte(c.lenSize - 1)
	copy(w.a[1:], nonce)
	putUint(w.a[1+c.nonceSize:], i)
}

// putUint writes v big-endian into all of b.
func putUint(b []byte, v uint64) {
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
}

// sliceForAppend extends in by n bytes, reallocating if needed, and returns
// the whole slice and the n new bytes (as crypto/cipher does).
func sliceForAppend(in []byte, n int) (head, tail []byte) {
	if total := len(in) + n; cap(in) >= total {
		head = in[:total]
	} else {
		head = make([]byte, total)
		copy(head, in)
	}
	tail = head[len(in):]
	return head, tail
}
