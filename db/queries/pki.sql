-- name: InsertInternalCA :execrows
-- The first start's CA; another replica's won when no row was inserted.
INSERT INTO internal_ca (id, cert_pem, key_sealed) VALUES (1, @cert_pem, @key_sealed)
ON CONFLICT (id) DO NOTHING;

-- name: GetInternalCA :one
SELECT * FROM internal_ca WHERE id = 1;
