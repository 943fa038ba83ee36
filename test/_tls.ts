/**
 * Certificates made for a test with `openssl`: a CA, a server certificate it signed (for
 * `localhost` and `127.0.0.1`), a second one it signed (a rotation), a client certificate it
 * signed, and a self-signed server certificate no one trusts.
 *
 * @module
 */

/** Paths (and PEM texts) of the certificates {@linkcode makeCertificates} made. */
export interface TestCertificates {
  /** The directory they are in (removed by `[Symbol.asyncDispose]`). */
  dir: string;
  caCert: string;
  caPem: string;
  /** Signed by the CA, for `localhost` and `127.0.0.1`. */
  serverCert: string;
  serverKey: string;
  serverCertPem: string;
  serverKeyPem: string;
  /** Signed by the CA too, another serial and subject (`CN=rotated`): a rotation's new pair. */
  rotatedCert: string;
  rotatedKey: string;
  /** A client certificate signed by the CA (`CN=foo-client`). */
  clientCert: string;
  clientKey: string;
  /** Self-signed for `localhost` and `127.0.0.1`: verifying it against the CA fails. */
  untrustedCert: string;
  untrustedKey: string;
  [Symbol.asyncDispose](): Promise<void>;
}

async function openssl(dir: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`openssl ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

async function signed(dir: string, name: string, subject: string, ext: string): Promise<void> {
  await openssl(
    dir,
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    subject,
  );
  await Deno.writeTextFile(`${dir}/${name}.ext`, ext);
  await openssl(
    dir,
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    // A serial of its own: with -CAcreateserial, certificates signed at once race on ca.srl (a CI
    // run saw "Unable to load number from ca.srl").
    "-set_serial",
    `0x${
      Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0"))
        .join("")
    }`,
    "-out",
    `${name}.pem`,
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
  );
}

const SERVER_EXT = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";

/** Makes the certificates in a new temporary directory. */
export async function makeCertificates(): Promise<TestCertificates> {
  const dir = await Deno.makeTempDir({ prefix: "foo-proxy-tls-" });
  await openssl(
    dir,
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=foo-proxy test CA",
  );
  await Promise.all([
    signed(dir, "server", "/CN=localhost", SERVER_EXT),
    signed(dir, "rotated", "/CN=rotated", SERVER_EXT),
    signed(dir, "client", "/CN=foo-client", "extendedKeyUsage=clientAuth\n"),
    openssl(
      dir,
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "untrusted.key",
      "-out",
      "untrusted.pem",
      "-days",
      "2",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ),
  ]);
  const read = (name: string) => Deno.readTextFile(`${dir}/${name}`);
  const [caPem, serverCertPem, serverKeyPem] = await Promise.all([
    read("ca.pem"),
    read("server.pem"),
    read("server.key"),
  ]);
  return {
    dir,
    caCert: `${dir}/ca.pem`,
    caPem,
    serverCert: `${dir}/server.pem`,
    serverKey: `${dir}/server.key`,
    serverCertPem,
    serverKeyPem,
    rotatedCert: `${dir}/rotated.pem`,
    rotatedKey: `${dir}/rotated.key`,
    clientCert: `${dir}/client.pem`,
    clientKey: `${dir}/client.key`,
    untrustedCert: `${dir}/untrusted.pem`,
    untrustedKey: `${dir}/untrusted.key`,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}
