"""A real S3 server on loopback for the tests: moto's server mode, spoken to over HTTP by boto3
exactly as AWS S3 or MinIO would be. It can be stopped and started again on the same port (its
buckets live in this process, so they survive), as a store that goes away and comes back."""

from __future__ import annotations

import json
import logging
import os
import uuid

import boto3

# moto checks credentials, as S3 does, after the first three requests: the ones that create the
# tests' IAM user, its policy and its key (moto reads this when it is imported).
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
from moto.server import ThreadedMotoServer  # noqa: E402

from mnist_artifact.repository.s3 import client_config  # noqa: E402

REGION = "us-east-1"
ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access line per request otherwise


class S3Server:
    def __init__(self):
        self.port = 0
        self._server: ThreadedMotoServer | None = None
        self.start()
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="tests")
        iam.put_user_policy(UserName="tests", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_S3))
        key = iam.create_access_key(UserName="tests")["AccessKey"]
        self.keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a process needs to reach this server the standard AWS way."""
        return {**self.keys, "AWS_REGION": REGION, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        """Stop answering and close the port: connections are refused, as with a store that is down."""
        self._server.stop()
        self._server._server.server_close()

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.keys["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.keys["AWS_SECRET_ACCESS_KEY"], region_name=REGION,
                            config=client_config({"AWS_ENDPOINT_URL_S3": self.endpoint}))

    def new_bucket(self) -> str:
        bucket = f"models-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket
