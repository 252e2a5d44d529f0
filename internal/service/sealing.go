package service

import (
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store/db"
)

// envVarsAD binds a sealed env_vars value to its sandbox: a value copied
// to another row does not open.
func envVarsAD(id pgtype.UUID) []byte { return []byte("sandboxes.env_vars:" + ID(id)) }

// sealEnvVars encrypts a create request's env vars for sandbox id (nil
// when there are none).
func (s *Sandboxes) sealEnvVars(id pgtype.UUID, env map[string]string) ([]byte, error) {
	if len(env) == 0 {
		return nil, nil
	}
	plain, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("env vars: %w", err)
	}
	return s.envCipher.Encrypt(plain, envVarsAD(id)), nil
}

// openEnvVars decrypts the env vars stored with a sandbox (nil when none).
func (s *Sandboxes) openEnvVars(row db.Sandbox) (map[string]string, error) {
	if len(row.EnvVars) == 0 {
		return nil, nil
	}
	plain, err := s.envCipher.Decrypt(row.EnvVars, envVarsAD(row.ID))
	if err != nil {
		return nil, fmt.Errorf("env vars of %s: %w", ID(row.ID), err)
	}
	var env map[string]string
	if err := json.Unmarshal(plain, &env); err != nil {
		return nil, fmt.Errorf("env vars of %s: %w", ID(row.ID), err)
	}
	return env, nil
}
