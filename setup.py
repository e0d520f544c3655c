"""Real-time ML on Apache Beam: one pipeline, bounded over archives and unbounded over Kafka.

This file is also what Beam workers install (``--setup_file ./setup.py``).
Exact versions that resolve together are in ``constraints.txt``.
"""
import setuptools

setuptools.setup(
    name="beam-rtml",
    version="0.1.0",
    description="Batch and streaming ML pipelines on Apache Beam: tensorflow-transform "
    "features, scikit-learn models run as ONNX, Kafka in and out.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["pipelines*", "transforms*", "models*", "templates*"]),
    package_data={"transforms": ["specs/*.yaml"],
                  "templates": ["metadata/*.json", "*.yaml", "Dockerfile", "Dockerfile.dockerignore", ".gcloudignore"]},
    # What scoring needs (batch and stream, ONNX, Kafka). No TensorFlow and no scikit-learn: those are
    # the train extra's (a new k-means model's k-means++ too). onnx builds the k-means feature graph.
    install_requires=[
        "apache-beam==2.77.0",
        "onnx==1.23.2",
        "onnxruntime==1.31.1",
        "confluent-kafka[schemaregistry,avro,json]==2.16.1",  # Schema Registry formats: --value_format
        "httpx2==2.16.2",  # the registry client's transport: its errors say a registry cannot answer
        "orjson==3.13.0",
        "numpy==2.4.6",
        "pyarrow==25.0.1",
        "PyYAML==6.0.3",
        "prometheus-client==0.26.0",  # a live stream's --metrics_port
    ],
    extras_require={
        # training, and --engine sklearn
        "train": ["tensorflow-transform==1.21.0", "scikit-learn==1.9.1", "skl2onnx==1.20.0"],
        # Dataflow: Beam's GCP IO and the flex-template launch client
        "gcp": ["apache-beam[gcp]==2.77.0", "google-cloud-dataflow-client==0.13.0"],
        # rtml report: charts in one HTML page, ROC and precision-recall curves
        "report": ["plotly==7.1.0", "scikit-learn==1.9.1"],
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "hypothesis==6.170.15",
                 "rfc3339-validator==0.1.4"],
    },
    entry_points={"console_scripts": ["rtml = pipelines.rtml:main"]},
)
