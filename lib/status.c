#include <ctxvars.h>

const char *cv_strerror(cv_status_t status)
{
    switch (status) {
    case CV_OK:
        return "success";
    case CV_ENOVALUE:
        return "variable has no value and no default";
    case CV_ENOMEM:
        return "out of memory; nothing was changed";
    case CV_EINVAL:
        return "invalid argument";
    case CV_ETOKEN_VAR:
        return "token was created by a different variable";
    case CV_ETOKEN_CONTEXT:
        return "token was created in a different context";
    case CV_ETOKEN_USED:
        return "token has already been used";
    case CV_EBUSY:
        return "context is already entered";
    case CV_ENOTCURRENT:
        return "context is not the current context";
    }
    return "unknown ctxvars status";
}
