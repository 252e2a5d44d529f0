-- The vCPUs a host declares it offers (its agent's -max-vcpus).
--
-- Agents report their machine's CPUs in total_vcpus, to which the scheduler
-- applies the control plane's -cpu-overcommit. An operator who sets an
-- agent's -max-vcpus declares the host's vCPU capacity outright: the
-- scheduler places that many vCPUs on it, whatever the overcommit ratio
-- (the agent refuses more). 0: nothing declared.

-- +goose Up
ALTER TABLE hosts ADD COLUMN max_vcpus integer NOT NULL DEFAULT 0 CHECK (max_vcpus >= 0);

-- +goose Down
ALTER TABLE hosts DROP COLUMN IF EXISTS max_vcpus;
