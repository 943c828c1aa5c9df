/* A ggml host that keeps ggml private, as Node addons and Python ctypes do: libggml-base and
 * libggml are dlopen'ed with RTLD_LOCAL, nothing of ggml is in the global scope, and the
 * backend is loaded through that private ggml's own ggml_backend_load.
 *
 * usage: rtld_local_host <libggml-base.so> <libggml.so> <backend .so> [<other base> <other ggml>]
 *   other base/ggml: a second, different ggml, also dlopen'ed RTLD_LOCAL (before the first);
 *   after the backend registered through the first ggml, the host also asks the second
 *   ggml's ggml_backend_load for it and prints "second ggml: refused" or "...: registered".
 * Prints what it sees; exits 0 only when the backend registered with a device "AttnRot",
 * a backend could be created on it, and the backend's log line came through ggml's logger
 * (ggml_log_set of this private ggml). Exit 3: the backend refused (registry NULL). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void * (*load_fn)(const char *);
typedef const char * (*name_fn)(void *);
typedef const char * (*str_fn)(void);
typedef size_t (*count_fn)(void *);
typedef void * (*get_fn)(void *, size_t);
typedef void * (*init_fn)(void *, const char *);
typedef void (*free_fn)(void *);
typedef void (*log_cb)(int level, const char * text, void * user);
typedef void (*log_set_fn)(log_cb, void *);

static int registered_lines = 0;

static void on_log(int level, const char * text, void * user) {
    (void) user;
    if (strstr(text, "attnrot: backend AttnRot registered")) {
        registered_lines++;
    }
    fprintf(stderr, "[ggml log %d] %s", level, text);
}

static void * open_local(const char * path) {
    void * h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        exit(2);
    }
    return h;
}

static void * need(void * h, const char * name) {
    void * p = dlsym(h, name);
    if (!p) {
        fprintf(stderr, "dlsym %s: %s\n", name, dlerror());
        exit(2);
    }
    return p;
}

int main(int argc, char ** argv) {
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: %s <libggml-base.so> <libggml.so> <backend.so> [<other base> <other ggml>]\n", argv[0]);
        return 2;
    }
    void * other = NULL;
    if (argc == 6) {
        void * other_base = open_local(argv[4]);
        other = open_local(argv[5]);
        printf("other ggml %s loaded RTLD_LOCAL\n", ((str_fn) need(other_base, "ggml_version"))());
    }
    void * base = open_local(argv[1]);
    void * ggml = open_local(argv[2]);

    /* what the old lookup (dlsym(RTLD_DEFAULT, ...)) would see */
    int global_version = dlsym(RTLD_DEFAULT, "ggml_version") != NULL;
    int global_load = dlsym(RTLD_DEFAULT, "ggml_backend_load") != NULL;
    int global_log = dlsym(RTLD_DEFAULT, "ggml_log_internal") != NULL;
    printf("global scope: ggml_version %s, ggml_backend_load %s, ggml_log_internal %s\n",
           global_version ? "visible" : "not visible", global_load ? "visible" : "not visible",
           global_log ? "visible" : "not visible");

    ((log_set_fn) need(base, "ggml_log_set"))(on_log, NULL);
    str_fn version = (str_fn) need(base, "ggml_version");
    printf("private ggml %s\n", version());

    void * reg = ((load_fn) need(ggml, "ggml_backend_load"))(argv[3]);
    if (!reg) {
        printf("backend refused (ggml_backend_load returned NULL)\n");
        return 3;
    }
    const char * reg_name = ((name_fn) need(ggml, "ggml_backend_reg_name"))(reg);
    size_t n_dev = ((count_fn) need(ggml, "ggml_backend_reg_dev_count"))(reg);
    printf("registry %s, %zu device(s)\n", reg_name, n_dev);
    if (n_dev != 1) {
        return 1;
    }
    void * dev = ((get_fn) need(ggml, "ggml_backend_reg_dev_get"))(reg, 0);
    const char * dev_name = ((name_fn) need(ggml, "ggml_backend_dev_name"))(dev);
    printf("device %s\n", dev_name);
    void * backend = ((init_fn) need(ggml, "ggml_backend_dev_init"))(dev, NULL);
    if (!backend) {
        printf("ggml_backend_dev_init failed\n");
        return 1;
    }
    printf("backend %s\n", ((name_fn) need(base, "ggml_backend_name"))(backend));
    ((free_fn) need(base, "ggml_backend_free"))(backend);
    printf("registration lines through the private ggml logger: %d\n", registered_lines);
    if (other) {
        void * reg2 = ((load_fn) need(other, "ggml_backend_load"))(argv[3]);
        printf("second ggml: %s\n", reg2 ? "registered" : "refused");
    }
    if (strcmp(reg_name, "AttnRot") != 0 || strcmp(dev_name, "AttnRot") != 0 || registered_lines != 1) {
        return 1;
    }
    printf("rtld_local_host: ok\n");
    return 0;
}
