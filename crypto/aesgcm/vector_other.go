//go:build !amd64

package aesgcm

import (
	"crypto/cipher"
	"errors"
)

// hasVector is false: the vector code is amd64 assembly.
const hasVector = false

func newVector([]byte) (cipher.AEAD, error) {
	return nil, errors.New("aesgcm: no vector code on this architecture")
}
