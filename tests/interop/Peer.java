// Java peer for tests/interop.rs: the BSK spec's section 15 Java sample (JCE
// "AES/CBC/PKCS5PADDING" + Apache commons-codec Base64), its encrypt/decrypt methods copied
// with only the key and IV turned into parameters.
//
//   java -cp commons-codec.jar Peer.java encrypt KEY IV  < plaintext  > base64 (no newline)
//   java -cp commons-codec.jar Peer.java decrypt KEY IV  < base64     > plaintext (no newline)
//   java -cp commons-codec.jar Peer.java batch           < requests   > one answer per line
//
// The sample works on Java Strings: the plaintext read on stdin is turned into a String as
// UTF-8 (as an application holding that text would have it), and the decrypted String is
// written out as UTF-8. In between, the sample's own `value.getBytes()` and
// `new String(original)` use the platform default charset, as the sample does.
//
// Batch mode (one JVM start for many payloads), one request per line:
//   encrypt KEY IV <standard base64 of the plaintext bytes>  ->  ok <ciphertext as the sample returns it>
//   decrypt KEY IV <ciphertext>                              ->  ok <standard base64 of the plaintext bytes>
//   charset                                                  ->  ok <Charset.defaultCharset()>
// A sample method returning null (it caught an exception) answers `err`.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;

import javax.crypto.Cipher;
import javax.crypto.spec.IvParameterSpec;
import javax.crypto.spec.SecretKeySpec;

import org.apache.commons.codec.binary.Base64;

public class Peer {

    private static String key;
    private static String initVector;

    // ---- spec sample, section 15 (b) ----

    // Encryption
    public static String encrypt(String value) {
        try {
            IvParameterSpec iv = new IvParameterSpec(initVector.getBytes("UTF-8"));
            SecretKeySpec skeySpec = new SecretKeySpec(key.getBytes("UTF-8"), "AES");

            Cipher cipher = Cipher.getInstance("AES/CBC/PKCS5PADDING");
            cipher.init(Cipher.ENCRYPT_MODE, skeySpec, iv);

            byte[] encrypted = cipher.doFinal(value.getBytes());
            return Base64.encodeBase64String(encrypted);
        } catch (Exception ex) {
            ex.printStackTrace();
        }
        return null;
    }

    // Decryption
    public static String decrypt(String encrypted) {
        try {
            IvParameterSpec iv = new IvParameterSpec(initVector.getBytes("UTF-8"));
            SecretKeySpec skeySpec = new SecretKeySpec(key.getBytes("UTF-8"), "AES");

            Cipher cipher = Cipher.getInstance("AES/CBC/PKCS5PADDING");
            cipher.init(Cipher.DECRYPT_MODE, skeySpec, iv);
            byte[] original = cipher.doFinal(Base64.decodeBase64(encrypted));

            return new String(original);
        } catch (Exception ex) {
            ex.printStackTrace();
        }
        return null;
    }

    // ---- end of the sample ----

    public static void main(String[] args) throws Exception {
        OutputStream out = System.out;
        if (args.length == 1 && args[0].equals("batch")) {
            batch(out);
            return;
        }
        if (args.length != 3) {
            System.err.println("usage: Peer encrypt|decrypt KEY IV, or Peer batch");
            System.exit(2);
        }
        key = args[1];
        initVector = args[2];
        switch (args[0]) {
            case "encrypt": {
                String value = new String(System.in.readAllBytes(), StandardCharsets.UTF_8);
                String encrypted = encrypt(value);
                if (encrypted == null) {
                    System.exit(1);
                }
                out.write(encrypted.getBytes(StandardCharsets.US_ASCII));
                break;
            }
            case "decrypt": {
                String encrypted = new String(System.in.readAllBytes(), StandardCharsets.US_ASCII);
                String decrypted = decrypt(encrypted);
                if (decrypted == null) {
                    System.exit(1);
                }
                out.write(decrypted.getBytes(StandardCharsets.UTF_8));
                break;
            }
            default:
                System.err.println("unknown mode " + args[0]);
                System.exit(2);
        }
        out.flush();
    }

    private static void batch(OutputStream raw) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        PrintStream out = new PrintStream(raw, false, "US-ASCII");
        java.util.Base64.Encoder wrap = java.util.Base64.getEncoder();
        java.util.Base64.Decoder unwrap = java.util.Base64.getDecoder();
        String line;
        while ((line = in.readLine()) != null) {
            String[] f = line.split(" ", 4);
            String answer = null;
            if (f.length == 1 && f[0].equals("charset")) {
                answer = Charset.defaultCharset().name();
            } else if (f.length == 4 && f[0].equals("encrypt")) {
                key = f[1];
                initVector = f[2];
                answer = encrypt(new String(unwrap.decode(f[3]), StandardCharsets.UTF_8));
            } else if (f.length == 4 && f[0].equals("decrypt")) {
                key = f[1];
                initVector = f[2];
                String decrypted = decrypt(f[3]);
                if (decrypted != null) {
                    answer = wrap.encodeToString(decrypted.getBytes(StandardCharsets.UTF_8));
                }
            }
            out.print(answer == null ? "err\n" : "ok " + answer + "\n");
        }
        out.flush();
    }
}
