"""The local runtimes a set-up fetches once, so that nothing downloads while a pipeline runs.

    python -m pipelines.artifacts          # fetch what this venv lacks; one line for each

- **Prism**, Beam's portable local runner, built from its source on the Go module proxy at the
  apache-beam version, with one fix (``PRISM_FIX``), into the venv's ``bin/``. The PrismRunner preset
  points ``--prism_location`` at it.
- **fake-gcs-server**, a Cloud Storage emulator, built the same way, for the tests of ``gs://`` model
  directories and backfills.
- **Apache Kafka** (``org.apache.kafka:kafka_2.13``) from Maven Central, for the local broker of the
  tests, the demo and the benchmarks (``pipelines.kafka_broker``).
- **Beam's Flink job server** (``org.apache.beam:beam-runners-flink-1.19``) from Maven Central. The
  FlinkRunner preset runs it with an embedded Flink (``--flink_master [local]``).
- **A Flink cluster's extras** (``flink-statebackend-rocksdb`` and ``slf4j-simple``): with the job server's jars,
  what ``rtml flink-cluster`` (``pipelines.flink_cluster``) runs a JobManager and TaskManagers from.
- **A Schema Registry with authentication**, for the tests of the ``confluent-*`` value formats: Apicurio
  Registry 2.6 (``io.apicurio:apicurio-registry-app``, its ``all`` zip: a runnable Quarkus application with
  Confluent's REST API under ``/apis/ccompat/v7``) and Keycloak (``org.keycloak:keycloak-quarkus-dist``), which
  checks the registry's clients' basic-auth credentials (Apicurio exchanges them for a Keycloak token). Both are
  the distributions their projects publish to Maven Central; Confluent's own registry and Karapace are not served
  by the registries this machine reaches (``tests/schema_registry.py`` starts them).
- **Beam's Java Kafka IO** (``beam-sdks-java-io-kafka`` with ``beam-sdks-java-expansion-service``, at the
  Flink runner's Beam version) for ``--kafka_io beam``: its expansion service, and on the Flink job
  server's class path, where Flink runs the Java transforms in its own JVM (an EMBEDDED environment).

Maven artifacts go to ``<venv>/share/rtml/<name>/lib`` with a launcher jar beside them: a jar holding
only a manifest whose ``Class-Path`` names the libraries, so ``java -jar`` starts the service as
Beam's shaded jars do.

Why Beam 2.62's Flink runner with apache-beam 2.77: the shaded ``beam-runners-flink-*-job-server``
jars are not served by the registry this project installs from, and of the unshaded runner only
2.62.0 and 2.70.0 are; 2.70.0 needs ``beam-runners-java-job-service`` 2.70.0, which is not served
either. 2.62.0 resolves whole, and the Job API and Fn API it speaks run apache-beam 2.77's Python
SDK (tests/test_flink.py checks records against the DirectRunner's).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

BEAM_VERSION = importlib.metadata.version("apache-beam")
PRISM_SOURCE = ("github.com/apache/beam/sdks/v2", "go/cmd/prism")  # (module, the command's folder in it)
# Prism 2.77 waits for a bundle's response in a loop that keeps selecting on the bundle's closed "outputs are
# in" channel, so from a bundle's last output to its response (the SDK still gathers the bundle's metrics and
# answers) a core spins. Streams run dozens of bundles a second: live fraud_entity at 1,000 events/s, Prism took
# 0.60 of a core before the fix and 0.32 after (docs/design.md, "Prism's spinning bundle loop").
# (file in the module, its text, the text fixed); where the text has changed, Prism is built as it is, and the
# set-up says so.
PRISM_FIX = ("go/pkg/beam/runners/prism/internal/stage.go",
             "\t\tcase <-dataReady:\n\t\t\tdataFinished = true\n",
             "\t\tcase <-dataReady:\n\t\t\tdataFinished = true\n\t\t\tdataReady = nil // a closed channel is always ready\n")
# The tests' Cloud Storage emulator. 1.56.1 checks ifGenerationMatch on uploads, which the lock and
# CURRENT rely on; it answers the batch calls Beam's file sinks finalize with by nothing (no parts).
FAKE_GCS_SERVER = ("github.com/fsouza/fake-gcs-server", "1.56.1")
KAFKA = ((("org.apache.kafka", "kafka_2.13", "4.4.0"),), "kafka.Kafka")
FLINK_VERSION = "1.19"
FLINK_BEAM_VERSION = "2.62.0"
FLINK_JOB_SERVER = ((("org.apache.beam", f"beam-runners-flink-{FLINK_VERSION}", FLINK_BEAM_VERSION),),
                    "org.apache.beam.runners.flink.FlinkJobServerDriver")
# What a Flink session cluster (pipelines/flink_cluster.py) needs beyond the job server's jars, which it runs on: RocksDB's
# state backend, and a logger (without one slf4j prints nothing, and a TaskManager that fails exits without a word).
FLINK_CLUSTER = ((("org.apache.flink", "flink-statebackend-rocksdb", f"{FLINK_VERSION}.0"),
                  ("org.slf4j", "slf4j-simple", "1.7.30")),
                 "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint")
# Beam 2.62's Flink runner keeps each self-checkpoint of a Python splittable DoFn in a keyed value state named for
# it, never cleared (apache/beam#27648; fixed by apache/beam#39191 in versions of the runner not served here). The
# project's Kafka read checkpoints after every read slice, dozens of times a second, and each new state name costs
# Flink a state table of 128 key groups: a stream's job server held 7,569 of them and 443 MB of live heap after 5
# minutes at 200 events/s (RSS 435 -> 1,296 MB), its checkpoints growing alike (docs/design.md, "The Flink job
# server's heap"). Fixed at set-up: the residuals of a key go in one map state, each removed once it is read again.
# The same handler holds the watermark at the residual's watermark cut to whole seconds (the protobuf timestamp's
# nanos are dropped), so downstream the watermark lagged up to a second behind the read's: fraud_entity's releases
# on Flink waited 1-2 s past --max_delay_s where Prism's waited 0-0.5 s (docs/design.md, "Flink's second").
# Each TaskManager numbers the Python workers it asks an external worker pool for from 1 ("1-1", "2-1", ...), and
# the pool keeps its workers by that id: on a cluster whose TaskManagers share a pool, one TaskManager's stop of its
# worker "2-1" killed the other's, which then waited for it forever. Fixed: the ids start with the JVM's process id.
# (artifact, its file, ((its text, the text fixed), ...)); compiled against the job server's libraries (and these,
# needed only to compile), into a jar first on its class path. Where a text has changed, the job server runs as it is.
FLINK_FIX = (
    (("org.apache.beam", "beam-runners-java-fn-execution", FLINK_BEAM_VERSION),
     "org/apache/beam/runners/fnexecution/control/BundleCheckpointHandlers.java",
     (("                .state(stateNamespace, StateTags.value(tag, residualCoder))\n                .write(\n",
       "                .state(stateNamespace,\n"
       "                    StateTags.map(SDF_PREFIX, org.apache.beam.sdk.coders.StringUtf8Coder.of(), residualCoder))\n"
       "                .put(\n                    tag,\n"),
      ("              outputTimestamp = Math.min(outputTimestamp, outputWatermark.getSeconds() * 1000);\n",
       "              outputTimestamp = Math.min(outputTimestamp,\n"
       "                  outputWatermark.getSeconds() * 1000 + outputWatermark.getNanos() / 1_000_000);\n"))),
    (("org.apache.beam", f"beam-runners-flink-{FLINK_VERSION}", FLINK_BEAM_VERSION),
     "org/apache/beam/runners/flink/translation/wrappers/streaming/ExecutableStageDoFnOperator.java",
     (("        WindowedValue stateValue =\n"
       "            keyedStateInternals.state(namespace, StateTags.value(timerId, residualCoder)).read();\n",
       "        org.apache.beam.sdk.state.MapState<String, WindowedValue<InputT>> residuals =\n"
       "            keyedStateInternals.state(namespace, StateTags.map(StateAndTimerBundleCheckpointHandler.SDF_PREFIX,\n"
       "                org.apache.beam.sdk.coders.StringUtf8Coder.of(), residualCoder));\n"
       "        WindowedValue stateValue = residuals.get(timerId).read();\n"
       "        residuals.remove(timerId);\n"),)),
    (("org.apache.beam", "beam-runners-java-fn-execution", FLINK_BEAM_VERSION),
     "org/apache/beam/runners/fnexecution/control/DefaultJobBundleFactory.java",
     (("    this.stageIdGenerator = () -> factoryId + \"-\" + stageIdSuffixGenerator.getId();\n",
       "    this.stageIdGenerator = () -> java.lang.management.ManagementFactory.getRuntimeMXBean().getName()\n"
       "        .split(\"@\")[0] + \"-\" + factoryId + \"-\" + stageIdSuffixGenerator.getId();\n"),)),
)
FLINK_FIX_COMPILE_ONLY = (("com.github.spotbugs", "spotbugs-annotations", "4.8.6"),)
# The Java SDK of the Flink job server runs these, so they are at its version. jamm: the embedded
# Java SDK harness needs it; io-kafka's Confluent dependencies (Schema Registry) are not on Maven Central.
KAFKA_IO = ((("org.apache.beam", "beam-sdks-java-expansion-service", FLINK_BEAM_VERSION),
             ("org.apache.beam", "beam-sdks-java-io-kafka", FLINK_BEAM_VERSION),
             ("com.github.jbellis", "jamm", "0.4.0")),
            "org.apache.beam.sdk.expansion.service.ExpansionService")
# (name, groupId:artifactId:version:zip:classifier, the folder the zip holds if one, a command run in it once
# unpacked). Keycloak is built for an in-memory database and a cache of its own at set-up, so that each start runs
# it as built (``start --optimized``) instead of rebuilding itself first (10 s, 20 s of CPU).
APICURIO = ("apicurio", "io.apicurio:apicurio-registry-app:2.6.13.Final:zip:all", None, None)
KEYCLOAK = ("keycloak", "org.keycloak:keycloak-quarkus-dist:26.5.6:zip", "keycloak-26.5.6",
            ("bin/kc.sh", "build", "--db=dev-mem", "--cache=local"))
HOME = Path(sys.prefix) / "share" / "rtml"


class MissingArtifact(RuntimeError):
    """A runtime the set-up did not fetch; the message says how to get it."""


def prism_binary() -> Path:
    return Path(sys.prefix) / "bin" / "prism"


def fake_gcs_server_binary() -> Path:
    return Path(sys.prefix) / "bin" / "fake-gcs-server"


def kafka_jar() -> Path:
    return _launcher("kafka")


def flink_job_server_jar() -> Path:
    return _launcher("flink")


def flink_cluster_jar() -> Path:
    return _launcher("flink_cluster")


def kafka_io_expansion_jar() -> Path:
    return _launcher("kafka_io")


def distribution(name: str) -> Path:
    """Where the set-up unpacked the zip ``fetch_distribution`` fetched as ``name``."""
    return HOME / name


def _launcher(name: str) -> Path:
    return HOME / name / f"{name}.jar"


def require(path: Path, what: str) -> Path:
    """``path``, or MissingArtifact naming the set-up step that makes it."""
    if not path.exists():
        raise MissingArtifact(f"{what} is not installed ({path} is missing); run: "
                              f"{Path(sys.executable).name} -m pipelines.artifacts")
    return path


def java() -> str:
    """The java to run services with: $JAVA_HOME's, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found or not Path(found).exists():
        raise MissingArtifact("no java found (install a JDK 17 or set JAVA_HOME)")
    return found


# ---------------------------------------------------------------------------------------------
# Fetching


def fetch_go(target: Path, module: str, version: str, without: str) -> str:
    """``go install module@version`` as ``target``, unless it is there."""
    name, go = target.name, shutil.which("go")
    if (instead := _no_go_build(target, go, without)) is not None:
        return instead
    with tempfile.TemporaryDirectory() as gobin:
        done = subprocess.run([go, "install", f"{module}@v{version}"], env={**os.environ, "GOBIN": gobin},
                              capture_output=True, text=True)
        if done.returncode != 0:
            return f"{name}: NOT INSTALLED: go install failed: {_last_line(done.stderr)}; {without}"
        shutil.move(str(Path(gobin) / module.rsplit("/", 1)[-1]), target)
    return f"{name}: built v{version} ({target})"


def fetch_prism(target: Path, version: str, without: str) -> str:
    """Prism built from a copy of its module's source with ``PRISM_FIX`` applied, as ``target``, unless it is
    there."""
    name, go = target.name, shutil.which("go")
    if (instead := _no_go_build(target, go, without)) is not None:
        return instead
    module, command = PRISM_SOURCE
    done = subprocess.run([go, "mod", "download", "-json", f"{module}@v{version}"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"{name}: NOT INSTALLED: go mod download failed: {_last_line(done.stdout + done.stderr)}; {without}"
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "source"
        # (copyfile: the module cache's files are read-only)
        shutil.copytree(json.loads(done.stdout)["Dir"], source, copy_function=shutil.copyfile)
        fixed = apply_fix(source, *PRISM_FIX)
        done = subprocess.run([go, "build", "-o", str(target), f"./{command}"], cwd=source,
                              capture_output=True, text=True)
    if done.returncode != 0:
        return f"{name}: NOT INSTALLED: go build failed: {_last_line(done.stderr)}; {without}"
    if not fixed:
        return (f"{name}: built v{version} WITHOUT the fix of its spinning bundle loop ({PRISM_FIX[0]} has "
                f"changed; see pipelines/artifacts.py) ({target})")
    return f"{name}: built v{version} with the fix of its spinning bundle loop ({target})"


def _no_go_build(target: Path, go: str | None, without: str) -> str | None:
    """The line to print instead of building ``target`` with ``go``: it is there, or there is no go."""
    if target.exists():
        return f"{target.name}: present ({target})"
    if go is None:
        return f"{target.name}: NOT INSTALLED: no go on PATH; {without}"
    return None


def apply_fix(root: Path, file: str, text: str, fixed: str) -> bool:
    """Replaces ``text`` with ``fixed`` in ``root/file``, if it is there exactly once; whether it did."""
    path = root / file
    content = path.read_text()
    if content.count(text) != 1:
        return False
    path.write_text(content.replace(text, fixed))
    return True


def fetch_maven(name: str, coordinates: tuple, also_on_class_path: tuple[str, ...] = (),
                fix: Callable[[], str] | None = None) -> str:
    """Fetch Maven artifacts and their dependencies into ``<name>/lib`` and write the launcher jar, whose class
    path lists first the jars of ``<name>/fix`` (which ``fix()``, run once the libraries are there, builds; its line
    follows) and last the fixed classes and libraries of ``also_on_class_path`` (other names) that are there."""
    dependencies, main_class = coordinates
    launcher = _launcher(name)
    what = ", ".join(":".join(coordinate) for coordinate in dependencies)
    folder = launcher.parent
    if launcher.exists():
        status = f"{name}: present ({launcher})"
    else:
        mvn = shutil.which("mvn")
        if mvn is None:
            return f"{name}: NOT INSTALLED: no mvn on PATH; {_without(name)}"
        shutil.rmtree(folder, ignore_errors=True)
        with tempfile.TemporaryDirectory() as work:
            (Path(work) / "pom.xml").write_text(_POM.format(dependencies="".join(
                _DEPENDENCY.format(group=g, artifact=a, version=v) for g, a, v in dependencies)))
            done = subprocess.run([mvn, "-q", "-B", "dependency:copy-dependencies", "-DincludeScope=runtime",
                                   f"-DoutputDirectory={folder / 'lib'}"], cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            return (f"{name}: NOT INSTALLED: mvn could not fetch {what}: "
                    f"{_last_error(done.stdout + done.stderr)}; {_without(name)}")
        status = f"{name}: fetched {what} ({launcher})"
    if not (folder / "lib").is_dir():  # a launcher left without its libraries
        launcher.unlink()
        return fetch_maven(name, coordinates, also_on_class_path, fix)
    if fix is not None:
        status += "\n" + fix()
    fixes = sorted((folder / "fix").glob("*.jar"))  # (classes fixed at set-up: first, so that they win)
    extra = [jar for other in also_on_class_path if (HOME / other / "lib").is_dir()
             for jar in sorted((HOME / other / "fix").glob("*.jar")) + sorted((HOME / other / "lib").iterdir())]
    _write_launcher(launcher, main_class, fixes + sorted((folder / "lib").iterdir()) + extra)
    return status


def fetch_distribution(name: str, artifact: str, folder: str | None, prepare: tuple[str, ...] | None,
                       without: str) -> str:
    """A zip from Maven Central (``artifact``: ``G:A:V:zip[:classifier]``) unpacked as ``distribution(name)``
    (``folder``: the one folder the zip holds, whose content that is), then ``prepare`` run in it, unless it is
    there."""
    target = distribution(name)
    if target.is_dir():
        return f"{name}: present ({target})"
    mvn = shutil.which("mvn")
    if mvn is None:
        return f"{name}: NOT INSTALLED: no mvn on PATH; {without}"
    with tempfile.TemporaryDirectory() as work:
        done = subprocess.run([mvn, "-q", "-B", "dependency:copy", f"-Dartifact={artifact}",
                               f"-DoutputDirectory={work}"], cwd=work, capture_output=True, text=True)
        zips = list(Path(work).glob("*.zip"))
        if done.returncode != 0 or len(zips) != 1:
            return (f"{name}: NOT INSTALLED: mvn could not fetch {artifact}: "
                    f"{_last_error(done.stdout + done.stderr)}; {without}")
        unpacked = Path(work) / "unpacked"
        with zipfile.ZipFile(zips[0]) as archive:
            archive.extractall(unpacked)
        for script in unpacked.rglob("*.sh"):  # (zipfile drops the execute bits)
            script.chmod(0o755)
        home = unpacked / folder if folder else unpacked
        if prepare:
            done = subprocess.run(prepare, cwd=home, capture_output=True, text=True)
            if done.returncode != 0:
                return (f"{name}: NOT INSTALLED: {' '.join(prepare)} failed: {_last_line(done.stdout + done.stderr)}; "
                        f"{without}")
        shutil.move(str(home), target)
    return f"{name}: fetched {artifact} ({target})"


def fix_flink() -> str:
    """Compiles ``FLINK_FIX`` into a jar in the job server's ``fix`` folder, whose jars its launcher lists first,
    unless it is there. The line to print."""
    libraries, folder = HOME / "flink" / "lib", HOME / "flink" / "fix"
    # (named for what it fixes: a changed fix or runner version builds a new one)
    fixed = folder / f"flink-fix-{hashlib.sha256(repr(FLINK_FIX).encode()).hexdigest()[:12]}.jar"
    mvn, javac = shutil.which("mvn"), _javac()  # (mvn is there: it fetched the job server)
    if fixed.exists():
        return f"flink fix: present ({fixed})"
    if javac is None:
        return "flink fix: NOT BUILT: no javac; a stream on Flink grows its job server's heap"
    unfixed = ("the job server runs unfixed: a stream on Flink grows its heap, its watermark a second late; "
               "TaskManagers cannot share a Python worker pool")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for artifact in [":".join(coordinate) + ":jar:sources" for coordinate, *_ in FLINK_FIX] + [
                ":".join(coordinate) for coordinate in FLINK_FIX_COMPILE_ONLY]:
            done = subprocess.run([mvn, "-q", "-B", "dependency:copy", f"-Dartifact={artifact}",
                                   f"-DoutputDirectory={work / 'jars'}"], capture_output=True, text=True)
            if done.returncode != 0:
                return (f"flink fix: NOT BUILT: mvn could not fetch {artifact}: "
                        f"{_last_error(done.stdout + done.stderr)}; {unfixed}")
        for (group, artifact, version), file, changes in FLINK_FIX:
            try:
                with zipfile.ZipFile(work / "jars" / f"{artifact}-{version}-sources.jar") as sources:
                    sources.extract(file, work / "src")
            except (KeyError, zipfile.BadZipFile) as error:
                return f"flink fix: NOT BUILT: {file} not found in {artifact}'s sources ({error}); {unfixed}"
            if not all(apply_fix(work / "src", file, text, fix) for text, fix in changes):
                return f"flink fix: NOT BUILT: {file} has changed (see pipelines/artifacts.py); {unfixed}"
        class_path = os.pathsep.join(str(jar) for jar in sorted(libraries.iterdir()) + sorted(
            (work / "jars").glob("*.jar")))
        done = subprocess.run([javac, "--release", "8", "-nowarn", "-proc:none", "-implicit:none", "-cp", class_path,
                               "-d", str(work / "classes"), *(str(work / "src" / file) for _, file, *_ in FLINK_FIX)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return f"flink fix: NOT BUILT: javac failed: {_last_line(done.stderr)}; {unfixed}"
        with zipfile.ZipFile(work / "fix.jar", "w") as jar:
            for path in sorted((work / "classes").rglob("*.class")):
                jar.write(path, path.relative_to(work / "classes").as_posix())
        shutil.rmtree(folder, ignore_errors=True)  # (an earlier fix's jar)
        folder.mkdir(parents=True)
        shutil.move(work / "fix.jar", fixed)  # (whole, or not there)
    return f"flink fix: built ({fixed})"


def _javac() -> str | None:
    """The javac beside ``java()``'s java, or on PATH."""
    try:
        beside = Path(java()).resolve().parent / "javac"
    except MissingArtifact:
        return shutil.which("javac")
    return str(beside) if beside.exists() else shutil.which("javac")


def _without(name: str) -> str:
    return {"kafka": "the local Kafka broker (tests, demo, benchmarks) is unavailable; pipelines still reach any "
                     "--bootstrap_servers",
            "flink": "FlinkRunner needs --flink_job_server_jar or --job_endpoint (the DirectRunner and PrismRunner "
                     "work)",
            "flink_cluster": "rtml flink-cluster cannot start a local Flink cluster (the embedded Flink works)",
            "kafka_io": "--kafka_io beam is unavailable (the project's own Kafka IO, the default, works)"}[name]


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>beam-rtml</groupId><artifactId>runtime</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>{dependencies}
  </dependencies>
</project>
"""
_DEPENDENCY = """
    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId><version>{version}</version>
      <exclusions><exclusion><groupId>io.confluent</groupId><artifactId>*</artifactId></exclusion></exclusions>
    </dependency>"""


def _write_launcher(path: Path, main_class: str, jars: list[Path]) -> None:
    """A jar of one manifest: ``Main-Class`` and a ``Class-Path`` of ``jars``, relative to it (the first of
    two jars holding a class wins)."""
    def header(name: str, value: str) -> bytes:
        # Manifest lines hold at most 72 bytes; a continuation line starts with a space.
        data, lines = f"{name}: {value}".encode(), []
        while data:
            width = 72 if not lines else 71
            lines.append((b" " if lines else b"") + data[:width])
            data = data[width:]
        return b"\r\n".join(lines) + b"\r\n"

    class_path = " ".join(os.path.relpath(jar, path.parent) for jar in jars)
    manifest = (header("Manifest-Version", "1.0") + header("Main-Class", main_class)
                + header("Class-Path", class_path) + b"\r\n")
    with zipfile.ZipFile(path, "w") as launcher:
        launcher.writestr("META-INF/MANIFEST.MF", manifest)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _last_error(text: str) -> str:
    errors = [line for line in text.splitlines() if "ERROR" in line and "Failed to execute" in line]
    return (errors[0] if errors else _last_line(text)).replace("\x1b", "")[:300]


def main() -> int:
    HOME.mkdir(parents=True, exist_ok=True)
    lines = [fetch_prism(prism_binary(), BEAM_VERSION,
                         "PrismRunner is unavailable (the DirectRunner and FlinkRunner work)"),
             fetch_go(fake_gcs_server_binary(), *FAKE_GCS_SERVER, "the Cloud Storage tests cannot run"),
             fetch_maven("kafka", KAFKA), fetch_maven("kafka_io", KAFKA_IO),
             fetch_maven("flink", FLINK_JOB_SERVER, also_on_class_path=("kafka_io",), fix=fix_flink),
             fetch_maven("flink_cluster", FLINK_CLUSTER, also_on_class_path=("flink",)),
             *(fetch_distribution(*server, "the tests of the confluent-* value formats cannot run")
               for server in (APICURIO, KEYCLOAK))]
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        lines.append("java: NOT FOUND: the local Kafka broker and FlinkRunner need a JDK 17")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
