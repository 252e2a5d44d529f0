package image

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
)

// BuilderVersion is part of every artifact key: bump it whenever a change
// to this package changes what it builds from the same inputs, so that
// stores rebuild instead of serving stale artifacts.
const BuilderVersion = "capsule-image/1"

// keyLen is the length in hex digits of artifact keys and image IDs.
const keyLen = 32

// keyer accumulates the inputs of an artifact into its content key. Each
// input is labelled and length-prefixed, so that no two different input
// lists hash alike.
type keyer struct{ h hash.Hash }

func newKeyer(kind string) *keyer {
	k := &keyer{h: sha256.New()}
	k.add("builder", BuilderVersion)
	k.add("kind", kind)
	return k
}

func (k *keyer) add(label string, values ...string) {
	for _, v := range values {
		fmt.Fprintf(k.h, "%d:%s=%d:%s\n", len(label), label, len(v), v)
	}
	if len(values) == 0 {
		fmt.Fprintf(k.h, "%d:%s\n", len(label), label)
	}
}

// addList adds a list as one input: the order of its items matters.
func (k *keyer) addList(label string, items []string) {
	k.add(label, fmt.Sprintf("%d:%s", len(items), strings.Join(items, "\x00")))
}

func (k *keyer) sum() string {
	return hex.EncodeToString(k.h.Sum(nil))[:keyLen]
}

// fileHash is the SHA-256 of a file's content, in hex.
func fileHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
