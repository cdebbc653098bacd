"""CSR signing throughput of the CA (EC P-256), against the floor of the crypto library.

Configurations, interleaved, each repeated; medians reported:
- raw sign: cryptography's CertificateBuilder.sign of a leaf like ours, nothing else;
- raw verify+sign: the same after loading the CSR and verifying its signature (the least any
  CA must do per request);
- issuer: ``CertificateAuthority.sign`` (our CSR checks, extensions, PEM out);
- control-plane CA: ``MeshCertificateAuthority.sign`` (the bearer token's HMAC, the record
  kept for status and rotation);
- gRPC: ``pilotfish control-plane`` in a subprocess pinned to CPU 0, N concurrent
  ``CreateCertificate`` calls from this process on CPU 1 over one channel; also the server's
  CPU seconds per certificate.
Then once: 100 simulated agents, each with its own channel, make a key and a CSR and get a
certificate, all at once from a cold control plane: the time until every one holds a cert.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_report import (
    REPO,
    cpu_seconds,
    format_table,
    machine_facts,
    median,
    pin_to_cpu,
    start_control_plane,
    terminate_on_sigterm,
    write_results,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from pilotfish.agent.ca_client import GrpcCertificateSigner
from pilotfish.ca.credentials import CredentialAuthority
from pilotfish.ca.csr import new_key_and_csr
from pilotfish.ca.issuer import CertificateAuthority, new_self_signed_root
from pilotfish.ca.store import ca_directory, load_or_create_ca
from pilotfish.controller.certificates import MeshCertificateAuthority
from pilotfish.model.identity import Identity
from pilotfish.model.resources import MeshSettings

IDENTITY = Identity("cluster.local", "default", "bench")
NOW = dt.datetime.now(dt.UTC)


def raw_sign(ca: CertificateAuthority, csr_pem: str, verify: bool) -> None:
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    if verify and not csr.is_signature_valid:
        raise AssertionError("bad CSR")
    (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.root.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(hours=24))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(IDENTITY.spiffe_id)]),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def per_second(work: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        work()
    return count / (time.perf_counter() - start)


async def grpc_run(
    address: str, token: str, csrs: list[str], count: int, concurrency: int
) -> float:
    signer = GrpcCertificateSigner(address, token)
    remaining = count

    async def worker(index: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await signer.sign(csrs[(index + remaining) % len(csrs)], 86400)

    try:
        await signer.sign(csrs[0], 86400)  # connect first: the channel is not what we measure
        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return count / (time.perf_counter() - start)
    finally:
        await signer.close()


async def cold_agents(address: str, credentials: CredentialAuthority, agents: int) -> float:
    async def agent(index: int) -> None:
        identity = Identity("cluster.local", "default", f"workload-{index}")
        signer = GrpcCertificateSigner(address, credentials.token_for(identity), f"agent-{index}")
        try:
            _, csr = new_key_and_csr(identity)
            await signer.sign(csr, 86400)
        finally:
            await signer.close()

    start = time.perf_counter()
    await asyncio.gather(*(agent(i) for i in range(agents)))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer signatures, 2 repetitions")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000, help="signatures per run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--agents", type=int, default=100)
    args = parser.parse_args()
    if args.quick:
        args.count, args.repetitions = 600, 2
    facts = machine_facts()
    print("\n".join(f"# {k}: {v}" for k, v in facts.items()), flush=True)
    csrs = [new_key_and_csr(IDENTITY)[1] for _ in range(64)]
    ca = new_self_signed_root("cluster.local", 3650 * 86400.0, NOW)
    runs: dict[str, list[float]] = {}
    with terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="pilotfish-bench-ca-") as tmp:
        folder = Path(tmp)
        (folder / "mesh.yaml").write_text(
            "apiVersion: pilotfish.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
            "spec: {trustDomain: cluster.local}\n"
        )
        mesh = MeshSettings()
        stored = load_or_create_ca(ca_directory(folder), mesh.certificates, "cluster.local", NOW)
        runtime = MeshCertificateAuthority(stored, mesh)
        token = runtime.credential(IDENTITY)
        child, port = start_control_plane(folder)
        server_cpu: list[float] = []
        try:
            pinned = pin_to_cpu(child.pid, 0)
            # Ourselves on the other core, after the child: it must not inherit our mask.
            if pinned:
                os.sched_setaffinity(0, {1})
            address = f"127.0.0.1:{port}"
            cycle = itertools.cycle(csrs)

            def csr() -> str:
                return next(cycle)

            configs: dict[str, Callable[[], float]] = {
                "raw sign (baseline)": lambda: per_second(
                    lambda: raw_sign(ca, csr(), False), args.count
                ),
                "raw verify+sign (baseline)": lambda: per_second(
                    lambda: raw_sign(ca, csr(), True), args.count
                ),
                "issuer": lambda: per_second(
                    lambda: ca.sign(csr(), IDENTITY, 86400, NOW), args.count
                ),
                "control-plane CA": lambda: per_second(
                    lambda: runtime.sign(csr(), token, 86400, "bench"), args.count
                ),
            }
            for repetition in range(args.repetitions):
                for name, run in configs.items():
                    runs.setdefault(name, []).append(run())
                before = cpu_seconds(child.pid)
                rate = asyncio.run(grpc_run(address, token, csrs, args.count, args.concurrency))
                server_cpu.append((cpu_seconds(child.pid) - before) / (args.count + 1))
                runs.setdefault(f"gRPC, {args.concurrency} in flight", []).append(rate)
                print(f"repetition {repetition + 1} done", flush=True)
            cold = asyncio.run(
                cold_agents(address, CredentialAuthority(_secret(folder)), args.agents)
            )
        finally:
            child.terminate()
            child.wait(15)
    floor = median(runs["raw verify+sign (baseline)"])
    rows = [
        (name, median(values), median(values) / floor, " ".join(f"{v:.0f}" for v in values))
        for name, values in runs.items()
    ]
    table = format_table(
        ("configuration", "signatures/s (median)", "x raw verify+sign", "runs"), rows
    )
    table += (
        f"\n\ngRPC server CPU per certificate: {1e6 * median(server_cpu):.0f} us "
        f"(control plane pinned to CPU 0: {pinned})"
        f"\n{args.agents} cold agents (key + CSR + own channel + CreateCertificate, all at once): "
        f"every one holds a certificate after {1000 * cold:.0f} ms"
    )
    print(table)
    data = {"runs": runs, "server_cpu_per_cert_s": server_cpu, "cold_agents_s": cold}
    print(f"results: {write_results('ca', facts, data, table)}")
    return 0


def _secret(folder: Path) -> bytes:
    return bytes.fromhex((ca_directory(folder) / "credential-secret").read_text().strip())


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
