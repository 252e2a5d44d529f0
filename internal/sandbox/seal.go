package sandbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Secrets at rest: the access token of a sandbox's envd and the
// environment variables it was created with are sealed (AES-256-GCM) in
// state.json and in template metadata, with a key of the manager's own
// (DataDir/secrets.key, mode 0600, created on first start). A copy of the
// state files (a backup, a support bundle) thus holds no usable token and
// no plaintext variable; whoever can read the key can run the agent.

const keyFile = "secrets.key"

// loadKey reads the manager's sealing key, creating it if missing.
func loadKey(dataDir string) (cipher.AEAD, error) {
	path := filepath.Join(dataDir, keyFile)
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", path, err)
		}
		_, err = f.Write(key)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = syncDir(dataDir)
		}
		if err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
	} else if err != nil {
		return nil, err
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("%s: want 32 bytes, found %d", path, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// seal encrypts the JSON of v; ad binds it to its owner (a sandbox or
// template name), so that sealed values cannot be swapped between files.
func seal(aead cipher.AEAD, ad string, v any) (string, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(aead.Seal(nonce, nonce, plain, []byte(ad))), nil
}

// unseal decrypts what seal produced into v.
func unseal(aead cipher.AEAD, ad, sealed string, v any) error {
	b, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil || len(b) < aead.NonceSize() {
		return errors.New("sealed secrets: malformed")
	}
	plain, err := aead.Open(nil, b[:aead.NonceSize()], b[aead.NonceSize():], []byte(ad))
	if err != nil {
		return fmt.Errorf("sealed secrets: cannot open (another key?): %w", err)
	}
	return json.Unmarshal(plain, v)
}

// recordSecrets is what state.json seals.
type recordSecrets struct {
	AccessToken string            `json:"accessToken,omitempty"`
	EnvVars     map[string]string `json:"envVars,omitempty"`
}
