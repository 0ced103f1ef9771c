/* SPDX-License-Identifier: MIT */
/*
 * --object: the definitions QEMU 7.2's tools accept, checked as they check
 * them.  qguard creates no object (they hold secrets for encryption, TLS
 * credentials and throttling, none of which the engine has), but a
 * definition qemu-img would refuse is refused here too, with its message,
 * instead of being ignored.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "id.h"
#include "tool-common.h"

typedef enum ObjPropKind {
    PROP_STR,
    PROP_BOOL,
    PROP_INT,
    PROP_ENUM,
    PROP_TREE,          /* "name" or "name.*": a nested value, any text */
} ObjPropKind;

typedef struct ObjProp {
    const char *name;
    ObjPropKind kind;
    const char *help_type;          /* as qemu-img TYPE,help shows it */
    const char *const *values;      /* PROP_ENUM */
} ObjProp;

typedef struct ObjType {
    const char *name;
    const char *required;           /* a property that must be given */
    bool creatable;                 /* in QEMU's ObjectType of qemu-img */
    ObjProp props[21];
} ObjType;

static const char *const secret_formats[] = { "raw", "base64", NULL };
static const char *const endpoints[] = { "client", "server", NULL };
static const char *const policies[] = { "deny", "allow", NULL };

#define TLS_PROPS \
    { "dir", PROP_STR, "string", NULL }, \
    { "endpoint", PROP_ENUM, "QCryptoTLSCredsEndpoint", endpoints }, \
    { "priority", PROP_STR, "string", NULL }

#define THROTTLE_X(n) \
    { "x-" n "-max-length", PROP_INT, "int", NULL }, \
    { "x-" n "-max", PROP_INT, "int", NULL }, \
    { "x-" n, PROP_INT, "int", NULL }

/* In qemu-img --object help order; props as TYPE,help lists them. */
static const ObjType obj_types[] = {
    { "authz-list", NULL, true, {
        { "policy", PROP_ENUM, "QAuthZListPolicy", policies },
        { "rules", PROP_TREE, "QAuthZListRule", NULL } } },
    /* listed by help, but not a type qemu-img 7.2 can create */
    { "authz-list-file", NULL, false, {
        { "filename", PROP_STR, "string", NULL },
        { "refresh", PROP_BOOL, "bool", NULL } } },
    { "authz-simple", "identity", true, {
        { "identity", PROP_STR, "string", NULL } } },
    { "main-loop", NULL, true, {
        { "aio-max-batch", PROP_INT, "int", NULL },
        { "thread-pool-max", PROP_INT, "int", NULL },
        { "thread-pool-min", PROP_INT, "int", NULL } } },
    { "pr-manager-helper", "path", true, {
        { "path", PROP_STR, "string", NULL } } },
    { "secret", NULL, true, {
        { "data", PROP_STR, "string", NULL },
        { "file", PROP_STR, "string", NULL },
        { "format", PROP_ENUM, "QCryptoSecretFormat", secret_formats },
        { "iv", PROP_STR, "string", NULL },
        { "keyid", PROP_STR, "string", NULL } } },
    { "secret_keyring", "serial", true, {
        { "format", PROP_ENUM, "QCryptoSecretFormat", secret_formats },
        { "iv", PROP_STR, "string", NULL },
        { "keyid", PROP_STR, "string", NULL },
        { "serial", PROP_INT, "int32_t", NULL } } },
    { "thread-context", NULL, true, {
        { "cpu-affinity", PROP_TREE, "int", NULL },
        { "node-affinity", PROP_TREE, "int", NULL } } },
    { "throttle-group", NULL, true, {
        { "limits", PROP_TREE, "ThrottleLimits", NULL },
        THROTTLE_X("bps-read"), THROTTLE_X("bps-total"),
        THROTTLE_X("bps-write"), THROTTLE_X("iops-read"),
        { "x-iops-size", PROP_INT, "int", NULL },
        THROTTLE_X("iops-total"), THROTTLE_X("iops-write") } },
    { "tls-cipher-suites", NULL, true, {
        TLS_PROPS, { "verify-peer", PROP_BOOL, "bool", NULL } } },
    { "tls-creds-anon", NULL, true, {
        TLS_PROPS, { "verify-peer", PROP_BOOL, "bool", NULL } } },
    { "tls-creds-psk", NULL, true, {
        TLS_PROPS, { "username", PROP_STR, "string", NULL },
        { "verify-peer", PROP_BOOL, "bool", NULL } } },
    { "tls-creds-x509", NULL, true, {
        { "dir", PROP_STR, "string", NULL },
        { "endpoint", PROP_ENUM, "QCryptoTLSCredsEndpoint", endpoints },
        { "passwordid", PROP_STR, "string", NULL },
        { "priority", PROP_STR, "string", NULL },
        { "sanity-check", PROP_BOOL, "bool", NULL },
        { "verify-peer", PROP_BOOL, "bool", NULL } } },
};

/*
 * Types of QEMU's ObjectType that qemu-img cannot create, with the member
 * QEMU finds missing first: it checks a definition against the type's
 * schema before it finds out the type is not available.
 */
static const struct {
    const char *name;
    const char *required;
} unavailable_types[] = {
    { "can-bus", NULL }, { "can-host-socketcan", "if" },
    { "colo-compare", "primary_in" }, { "cryptodev-backend", NULL },
    { "cryptodev-backend-builtin", NULL }, { "cryptodev-backend-lkcf", NULL },
    { "cryptodev-vhost-user", "chardev" }, { "dbus-vmstate", "addr" },
    { "filter-buffer", "netdev" }, { "filter-dump", "netdev" },
    { "filter-mirror", "netdev" }, { "filter-redirector", "netdev" },
    { "filter-replay", "netdev" }, { "filter-rewriter", "netdev" },
    { "input-barrier", "name" }, { "input-linux", "evdev" },
    { "iothread", NULL }, { "memory-backend-epc", "size" },
    { "memory-backend-file", "size" }, { "memory-backend-memfd", "size" },
    { "memory-backend-ram", "size" }, { "pef-guest", NULL },
    { "rng-builtin", NULL }, { "rng-egd", "chardev" },
    { "rng-random", NULL }, { "s390-pv-guest", NULL },
    { "sev-guest", "reduced-phys-bits" }, { "x-remote-object", "fd" },
    { "x-vfio-user-server", "socket" },
};

/*
 * The ids defined so far; a secret's value is its length in bytes plus
 * one, any other object's NULL.
 */
static GHashTable *obj_ids;

static const ObjType *find_type(const char *name)
{
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(obj_types); i++) {
        if (!strcmp(obj_types[i].name, name)) {
            return &obj_types[i];
        }
    }
    return NULL;
}

static const ObjProp *find_prop(const ObjType *t, const char *key)
{
    const ObjProp *p;

    for (p = t->props; p->name; p++) {
        size_t n = strlen(p->name);

        if (!strcmp(key, p->name) ||
            (p->kind == PROP_TREE && !strncmp(key, p->name, n) &&
             key[n] == '.')) {
            return p;
        }
    }
    return NULL;
}

static void print_help(const ObjType *t)
{
    const ObjProp *p;
    size_t i;

    if (!t) {
        printf("List of user creatable objects:\n");
        for (i = 0; i < G_N_ELEMENTS(obj_types); i++) {
            printf("  %s\n", obj_types[i].name);
        }
        return;
    }
    printf("%s options:\n", t->name);
    for (p = t->props; p->name; p++) {
        printf("  %s=<%s>\n", p->name, p->help_type);
    }
}

static bool check_prop_value(const ObjProp *p, const char *key,
                             const char *value)
{
    const char *const *v;
    char *end;

    switch (p->kind) {
    case PROP_BOOL:
        if (strcmp(value, "on") && strcmp(value, "off") &&
            strcmp(value, "true") && strcmp(value, "false") &&
            strcmp(value, "yes") && strcmp(value, "no")) {
            error_report("Parameter '%s' expects 'on' or 'off'", key);
            return false;
        }
        return true;
    case PROP_INT:
        errno = 0;
        (void)strtoll(value, &end, 0);
        if (!*value || *end || errno) {
            error_report("Parameter '%s' expects integer", key);
            return false;
        }
        return true;
    case PROP_ENUM:
        for (v = p->values; *v; v++) {
            if (!strcmp(*v, value)) {
                return true;
            }
        }
        error_report("Parameter '%s' does not accept value '%s'", key, value);
        return false;
    default:
        return true;
    }
}

static bool base64_valid(const char *s)
{
    size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                         "0123456789+/");

    return !s[n + strspn(s + n, "=")];
}

/*
 * A secret given encrypted with the secret @keyid: QEMU decrypts it with
 * AES-256-CBC.  qguard has no cryptography, so it checks what QEMU checks
 * before decrypting (the key, the IV, the length) and stops there.
 */
static bool check_encrypted_secret(const char *keyid, const char *iv,
                                   gsize len)
{
    gpointer key_len;
    g_autofree guchar *iv_bytes = NULL;
    gsize iv_len;

    if (!g_hash_table_lookup_extended(obj_ids, keyid, NULL, &key_len)) {
        error_report("No secret with id '%s'", keyid);
        return false;
    }
    if (!key_len) {
        error_report("Object with id '%s' is not a secret", keyid);
        return false;
    }
    if (GPOINTER_TO_SIZE(key_len) - 1 != 32) {
        error_report("Key should be 32 bytes in length");
        return false;
    }
    if (!iv) {
        error_report("IV is required to decrypt secret");
        return false;
    }
    iv_bytes = g_base64_decode(iv, &iv_len);
    if (iv_len != 16) {
        error_report("IV should be 16 bytes in length not %zu", iv_len);
        return false;
    }
    if (len % 16) {
        error_report("Length %zu must be a multiple of block size 16", len);
        return false;
    }
    return true;
}

/*
 * What QEMU checks when it creates the object, where qguard can check it.
 * Sets *@secret_len to a secret's length in bytes.
 */
static bool check_object(const ObjType *t, const QGuardOpts *o,
                         gsize *secret_len)
{
    const char *data = qguard_opts_get(o, "data");
    const char *file = qguard_opts_get(o, "file");
    const char *format = qguard_opts_get(o, "format");
    const char *keyid = qguard_opts_get(o, "keyid");

    if (!strcmp(t->name, "secret")) {
        g_autofree char *contents = NULL;
        g_autofree guchar *decoded = NULL;
        g_autoptr(GError) err = NULL;
        gsize len = 0;

        if (data && file) {
            error_report("'file' and 'data' are mutually exclusive");
            return false;
        }
        if (!data && !file) {
            error_report("Either 'file' or 'data' must be provided");
            return false;
        }
        if (file && !g_file_get_contents(file, &contents, &len, &err)) {
            error_report("Unable to read %s: %s", file, err->message);
            return false;
        }
        if (data) {
            len = strlen(data);
        }
        if (format && !strcmp(format, "base64")) {
            if (!base64_valid(data ? data : contents)) {
                error_report("Base64 data contains invalid characters");
                return false;
            }
            decoded = g_base64_decode(data ? data : contents, &len);
        }
        if (keyid && !check_encrypted_secret(keyid, qguard_opts_get(o, "iv"),
                                             len)) {
            return false;
        }
        *secret_len = len;
    }
    if (!strcmp(t->name, "secret_keyring")) {
        long serial = strtol(qguard_opts_get(o, "serial"), NULL, 0);

        /* KEYCTL_READ of length 0 only asks whether the key is readable */
        if (syscall(SYS_keyctl, 11, (int)serial, NULL, 0) < 0) {
            error_report("Unable to read serial key %08x: %s",
                         (unsigned)serial, g_strerror(errno));
            return false;
        }
    }
    if (!strcmp(t->name, "pr-manager-helper") &&
        access(qguard_opts_get(o, "path"), F_OK) < 0) {
        error_report("Failed to connect to '%s': %s",
                     qguard_opts_get(o, "path"), g_strerror(errno));
        return false;
    }
    if (!strcmp(t->name, "tls-cipher-suites") &&
        !qguard_opts_has(o, "priority")) {
        error_report("'priority' property is not set");
        return false;
    }
    if (g_str_has_prefix(t->name, "tls-creds-") &&
        strcmp(t->name, "tls-creds-anon") && !qguard_opts_has(o, "dir")) {
        error_report("Missing 'dir' property value");
        return false;
    }
    if (!strcmp(t->name, "tls-creds-x509")) {
        g_autofree char *ca = g_strdup_printf("%s/ca-cert.pem",
                                              qguard_opts_get(o, "dir"));
        if (access(ca, R_OK) < 0) {
            error_report("Unable to access credentials %s: %s", ca,
                         g_strerror(errno));
            return false;
        }
    }
    return true;
}

static G_NORETURN void refuse_type(const char *name, const QGuardOpts *o,
                                   int error_status)
{
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(unavailable_types); i++) {
        const char *req = unavailable_types[i].required;

        if (strcmp(unavailable_types[i].name, name)) {
            continue;
        }
        if (!qguard_opts_has(o, "id")) {
            error_report("Parameter 'id' is missing");
        } else if (req && !qguard_opts_has(o, req)) {
            error_report("Parameter '%s' is missing", req);
        } else {
            error_report("invalid object type: %s", name);
        }
        exit(error_status);
    }
    error_report("Parameter 'qom-type' does not accept value '%s'", name);
    exit(error_status);
}

/*
 * Check one --object definition as QEMU 7.2's tools do: the type, the id,
 * each property's syntax, then what creating it would find.  "help" and
 * "TYPE,help" print what qemu-img prints and exit 0; an error exits with
 * @error_status.
 */
void tool_object_option(const char *def, int error_status)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *o = qguard_opts_new();
    const char *type_name, *id;
    const ObjType *t;
    gsize secret_len = 0;
    guint i;

    if (qguard_opts_parse(o, def, "qom-type", &err) < 0) {
        error_report("%s", err->message);
        exit(error_status);
    }
    type_name = qguard_opts_get(o, "qom-type");
    if (type_name && !strcmp(type_name, "help")) {
        print_help(NULL);
        exit(0);
    }
    if (!type_name) {
        error_report("Parameter 'qom-type' is missing");
        exit(error_status);
    }
    t = find_type(type_name);
    if (!t || !t->creatable) {
        refuse_type(type_name, o, error_status);
    }
    if (qguard_opts_has(o, "help")) {
        print_help(t);
        exit(0);
    }
    id = qguard_opts_get(o, "id");
    if (!id) {
        error_report("Parameter 'id' is missing");
        exit(error_status);
    }
    if (!qguard_id_wellformed(id)) {
        error_report("Parameter 'id' expects an identifier\n"
                     "Identifiers consist of letters, digits, '-', '.', "
                     "'_', starting with a letter.\n");
        exit(error_status);
    }
    for (i = 0; i < qguard_opts_count(o); i++) {
        const char *key = qguard_opts_key(o, i);
        const ObjProp *p = find_prop(t, key);

        if (p && !check_prop_value(p, key, qguard_opts_value(o, i))) {
            exit(error_status);
        }
    }
    if (t->required && !qguard_opts_has(o, t->required)) {
        error_report("Parameter '%s' is missing", t->required);
        exit(error_status);
    }
    for (i = 0; i < qguard_opts_count(o); i++) {
        const char *key = qguard_opts_key(o, i);

        if (strcmp(key, "qom-type") && strcmp(key, "id") &&
            !find_prop(t, key)) {
            error_report("Parameter '%s' is unexpected", key);
            exit(error_status);
        }
    }
    if (!obj_ids) {
        obj_ids = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                        NULL);
    }
    if (g_hash_table_contains(obj_ids, id)) {
        error_report("attempt to add duplicate property '%s' to object "
                     "(type 'container')", id);
        exit(error_status);
    }
    if (!check_object(t, o, &secret_len)) {
        exit(error_status);
    }
    g_hash_table_insert(obj_ids, g_strdup(id),
                        strcmp(t->name, "secret") ? NULL :
                        GSIZE_TO_POINTER(secret_len + 1));
    qguard_opts_free(o);
}
