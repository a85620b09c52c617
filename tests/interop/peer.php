<?php
// PHP peer for tests/interop.rs: the BSK spec's section 15 PHP sample, verbatim in its
// library calls (openssl_encrypt / openssl_decrypt with options 0, i.e. base64 text).
//
//   php peer.php encrypt KEY IV   < plaintext   > base64 ciphertext (no newline)
//   php peer.php decrypt KEY IV   < base64      > plaintext bytes   (no newline)
//
// PHP strings are bytes: stdin goes to openssl_* as it is, and the result is written as it is.

if ($argc !== 4) {
    fwrite(STDERR, "usage: php peer.php encrypt|decrypt KEY IV\n");
    exit(2);
}
[, $mode, $key, $initializationVector] = $argv;
$input = stream_get_contents(STDIN);
$options = 0;

if ($mode === 'encrypt') {
    $data = $input;
    $encryptedData = openssl_encrypt($data, 'aes-256-cbc', $key, $options, $initializationVector);
    if ($encryptedData === false) {
        fwrite(STDERR, "openssl_encrypt failed: " . openssl_error_string() . "\n");
        exit(1);
    }
    echo $encryptedData;
} elseif ($mode === 'decrypt') {
    $encryptedData = $input;
    $decryptedData = openssl_decrypt($encryptedData, 'aes-256-cbc', $key, $options, $initializationVector);
    if ($decryptedData === false) {
        fwrite(STDERR, "openssl_decrypt failed: " . openssl_error_string() . "\n");
        exit(1);
    }
    echo $decryptedData;
} else {
    fwrite(STDERR, "unknown mode $mode\n");
    exit(2);
}
